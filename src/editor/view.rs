//! How the document is shown: zoom and pan (the viewport), the selection's corner handles and
//! what a drag on them does. Pure geometry, so the page's pointer code only translates events
//! and the maths is tested natively.
//!
//! Coordinates: *view* pixels are CSS pixels of the canvas element, origin at its top-left;
//! *document* pixels are the editor's canvas pixels. `view = doc * zoom + pan`.

use super::transform::{MAX_SCALE, MIN_SCALE, Rect, Transform};

/// Smallest zoom factor.
pub const MIN_ZOOM: f64 = 1.0 / 32.0;
/// Largest zoom factor.
pub const MAX_ZOOM: f64 = 32.0;
/// Half the side of a corner handle, in view pixels (the hit area is a bit larger).
pub const HANDLE_RADIUS: f64 = 6.0;

/// Zoom and pan.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Viewport {
    /// View pixels per document pixel.
    pub zoom: f64,
    /// View position of the document's origin.
    pub pan_x: f64,
    /// See `pan_x`.
    pub pan_y: f64,
}

impl Default for Viewport {
    fn default() -> Self {
        Viewport {
            zoom: 1.0,
            pan_x: 0.0,
            pan_y: 0.0,
        }
    }
}

impl Viewport {
    /// The largest zoom (at most 1, i.e. never enlarging) at which a `doc_w x doc_h` document
    /// fits a `view_w x view_h` area, centred.
    pub fn fit(doc_w: u32, doc_h: u32, view_w: f64, view_h: f64) -> Self {
        let (dw, dh) = (doc_w.max(1) as f64, doc_h.max(1) as f64);
        let zoom = (view_w / dw).min(view_h / dh).clamp(MIN_ZOOM, 1.0);
        Viewport {
            zoom,
            pan_x: ((view_w - dw * zoom) / 2.0).round(),
            pan_y: ((view_h - dh * zoom) / 2.0).round(),
        }
    }

    /// Document point under the view point `(vx, vy)`.
    pub fn to_doc(&self, vx: f64, vy: f64) -> (f64, f64) {
        ((vx - self.pan_x) / self.zoom, (vy - self.pan_y) / self.zoom)
    }

    /// View point of the document point `(x, y)`.
    pub fn to_view(&self, x: f64, y: f64) -> (f64, f64) {
        (x * self.zoom + self.pan_x, y * self.zoom + self.pan_y)
    }

    /// Zooms by `factor` keeping the document point under `(vx, vy)` in place (wheel zoom).
    pub fn zoom_about(&self, factor: f64, vx: f64, vy: f64) -> Self {
        if !factor.is_finite() || factor <= 0.0 {
            return *self;
        }
        let zoom = (self.zoom * factor).clamp(MIN_ZOOM, MAX_ZOOM);
        let (dx, dy) = self.to_doc(vx, vy);
        Viewport {
            zoom,
            pan_x: vx - dx * zoom,
            pan_y: vy - dy * zoom,
        }
    }

    /// Moves the view by `(dx, dy)` view pixels (a pan drag).
    pub fn panned(&self, dx: f64, dy: f64) -> Self {
        Viewport {
            pan_x: self.pan_x + dx,
            pan_y: self.pan_y + dy,
            ..*self
        }
    }
}

/// A corner of a layer's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corner {
    /// Top-left.
    TopLeft,
    /// Top-right.
    TopRight,
    /// Bottom-left.
    BottomLeft,
    /// Bottom-right.
    BottomRight,
}

impl Corner {
    /// All four, in drawing order.
    pub const ALL: [Corner; 4] = [
        Corner::TopLeft,
        Corner::TopRight,
        Corner::BottomLeft,
        Corner::BottomRight,
    ];

    /// The corner's document position on `bounds`.
    pub fn point(self, bounds: Rect) -> (f64, f64) {
        let (l, t) = (bounds.x as f64, bounds.y as f64);
        let (r, b) = (bounds.right() as f64, bounds.bottom() as f64);
        match self {
            Corner::TopLeft => (l, t),
            Corner::TopRight => (r, t),
            Corner::BottomLeft => (l, b),
            Corner::BottomRight => (r, b),
        }
    }

    /// The diagonally opposite corner (the one that stays put while this one is dragged).
    pub fn opposite(self) -> Corner {
        match self {
            Corner::TopLeft => Corner::BottomRight,
            Corner::TopRight => Corner::BottomLeft,
            Corner::BottomLeft => Corner::TopRight,
            Corner::BottomRight => Corner::TopLeft,
        }
    }
}

/// The handle of `bounds` under the view point `(vx, vy)`, if any.
pub fn handle_at(view: &Viewport, bounds: Rect, vx: f64, vy: f64) -> Option<Corner> {
    let reach = HANDLE_RADIUS + 3.0;
    Corner::ALL.into_iter().find(|c| {
        let (dx, dy) = c.point(bounds);
        let (hx, hy) = view.to_view(dx, dy);
        (vx - hx).abs() <= reach && (vy - hy).abs() <= reach
    })
}

/// The placement after dragging `corner` of a layer (image `image_w x image_h`, placed by
/// `start`) by `(dx, dy)` document pixels. The opposite corner stays fixed and the scale stays
/// uniform: the new scale is the drag projected onto the layer's diagonal (so the corner
/// follows the pointer along it), clamped to `MIN_SCALE..=MAX_SCALE`.
pub fn drag_corner(
    start: Transform,
    image_w: u32,
    image_h: u32,
    corner: Corner,
    dx: f64,
    dy: f64,
) -> Transform {
    let bounds = start.bounds(image_w, image_h);
    let (ax, ay) = corner.opposite().point(bounds);
    let (cx, cy) = corner.point(bounds);
    let (ux, uy) = (cx - ax, cy - ay);
    let along = ((cx + dx - ax) * ux + (cy + dy - ay) * uy) / (ux * ux + uy * uy).max(1e-9);
    let scale = ((start.scale as f64 * along) as f32).clamp(MIN_SCALE, MAX_SCALE);
    let scaled = Transform { scale, ..start }.bounds(image_w, image_h);
    let (w, h) = (scaled.width as f64, scaled.height as f64);
    // The fixed corner stays where it was; the top-left follows from it.
    let (x, y) = match corner {
        Corner::BottomRight => (ax, ay),
        Corner::TopLeft => (ax - w, ay - h),
        Corner::TopRight => (ax, ay - h),
        Corner::BottomLeft => (ax - w, ay),
    };
    Transform {
        x: x.round().clamp(i32::MIN as f64, i32::MAX as f64) as i32,
        y: y.round().clamp(i32::MIN as f64, i32::MAX as f64) as i32,
        scale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fit_centres_and_never_enlarges() {
        let v = Viewport::fit(100, 50, 400.0, 300.0);
        assert_eq!(v.zoom, 1.0);
        assert_eq!((v.pan_x, v.pan_y), (150.0, 125.0));
        let v = Viewport::fit(1000, 500, 400.0, 300.0);
        assert_eq!(v.zoom, 0.4);
        assert_eq!(v.to_view(1000.0, 500.0), (400.0, 250.0));
    }

    #[test]
    fn zoom_about_keeps_the_point_under_the_pointer() {
        let v = Viewport {
            zoom: 2.0,
            pan_x: 10.0,
            pan_y: -4.0,
        };
        let before = v.to_doc(77.0, 33.0);
        let z = v.zoom_about(1.5, 77.0, 33.0);
        assert_eq!(z.zoom, 3.0);
        let after = z.to_doc(77.0, 33.0);
        assert!((before.0 - after.0).abs() < 1e-9 && (before.1 - after.1).abs() < 1e-9);
        assert_eq!(v.zoom_about(1e9, 0.0, 0.0).zoom, MAX_ZOOM);
        assert_eq!(v.zoom_about(f64::NAN, 0.0, 0.0), v);
    }

    #[test]
    fn handles_are_hit_at_their_view_position() {
        let v = Viewport {
            zoom: 2.0,
            pan_x: 5.0,
            pan_y: 5.0,
        };
        let b = Rect {
            x: 10,
            y: 10,
            width: 20,
            height: 10,
        };
        assert_eq!(handle_at(&v, b, 25.0, 25.0), Some(Corner::TopLeft));
        assert_eq!(handle_at(&v, b, 65.0, 45.0), Some(Corner::BottomRight));
        assert_eq!(handle_at(&v, b, 45.0, 35.0), None);
    }

    #[test]
    fn dragging_a_corner_keeps_the_opposite_one() {
        let start = Transform {
            x: 10,
            y: 20,
            scale: 1.0,
        };
        // Bottom-right out along the diagonal on a 10x5 image: scale 2 about the top-left.
        let t = drag_corner(start, 10, 5, Corner::BottomRight, 10.0, 5.0);
        assert_eq!((t.x, t.y, t.scale), (10, 20, 2.0));
        // Top-left in halfway: scale 0.5, the bottom-right (20, 25) stays.
        let t = drag_corner(start, 10, 5, Corner::TopLeft, 5.0, 2.5);
        assert_eq!(t.scale, 0.5);
        let b = t.bounds(10, 5);
        assert_eq!((b.right(), b.bottom()), (20, 25));
        // Absurd drags clamp.
        let t = drag_corner(start, 10, 5, Corner::BottomRight, 1e9, 0.0);
        assert_eq!(t.scale, MAX_SCALE);
        let t = drag_corner(start, 10, 5, Corner::BottomRight, -10.0, -5.0);
        assert_eq!(t.scale, MIN_SCALE);
    }
}
