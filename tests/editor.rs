//! Message-driven tests of the headless editor (Graphite style): every change goes through
//! `Editor::update`, and each test reads as a sequence of user actions.

mod editor_dsl;

use std::sync::Arc;

use editor_dsl::{TestEditor, solid};
use image::{Rgba, RgbaImage};
use qwen_layered_web::editor::{
    Editor, EditorMessage, Effect, Error, LayerId, NewLayer, Transform,
};

/// Background, middle and top layers on an 8x8 canvas.
fn three_layers() -> (TestEditor, [LayerId; 3]) {
    let mut ed = TestEditor::new(8, 8);
    let a = ed.add_solid("bg", 8, 8, [0, 0, 255, 255], 0, 0);
    let b = ed.add_solid("mid", 4, 4, [0, 255, 0, 255], 2, 2);
    let c = ed.add_solid("top", 2, 2, [255, 0, 0, 128], 3, 3);
    (ed, [a, b, c])
}

#[test]
fn new_rejects_empty_and_oversized_documents() {
    assert!(matches!(Editor::new(0, 5), Err(Error::DocumentSize { .. })));
    assert!(matches!(
        Editor::new(5, 30_001),
        Err(Error::DocumentSize { .. })
    ));
}

#[test]
fn add_layers_from_a_decomposition_result() {
    let mut ed = TestEditor::new(4, 4);
    let images = vec![
        solid(4, 4, [1, 1, 1, 255]),
        solid(4, 4, [2, 2, 2, 9]),
        solid(2, 2, [3; 4]),
    ];
    let fx = ed.send(EditorMessage::AddLayers {
        layers: NewLayer::from_decomposition("Layer", images),
    });
    assert_eq!(ed.names(), ["Layer 1", "Layer 2", "Layer 3"]);
    let ids = ed.ids();
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2]);
    assert_eq!(ed.doc().selected, Some(ids[2]));
    assert!(fx.contains(&Effect::Render) && fx.contains(&Effect::LayersPanel));
    assert!(fx.contains(&Effect::Selection(Some(ids[2]))));
    assert!(fx.contains(&Effect::History {
        can_undo: true,
        can_redo: false
    }));
    let l = ed.layer(ids[1]);
    assert_eq!(
        (l.opacity, l.visible, l.transform),
        (1.0, true, Transform::default())
    );

    // Empty list: nothing happens, no undo step.
    assert!(
        ed.send(EditorMessage::AddLayers { layers: vec![] })
            .is_empty()
    );
    // A zero-size image is refused, and the whole message with it.
    let err = ed.send_err(EditorMessage::AddLayers {
        layers: vec![
            NewLayer::new("ok", solid(1, 1, [0; 4])),
            NewLayer::new("bad", RgbaImage::new(0, 3)),
        ],
    });
    assert!(matches!(err, Error::EmptyImage { .. }), "{err}");
    assert!(err.to_string().contains("\"bad\""), "{err}");
}

#[test]
fn select_is_validated_and_is_not_an_undo_step() {
    let (mut ed, [a, ..]) = three_layers();
    assert_eq!(ed.select(Some(a)), [Effect::Selection(Some(a))]);
    assert!(ed.select(Some(a)).is_empty());
    let err = ed.send_err(EditorMessage::Select {
        id: Some(LayerId(99)),
    });
    assert!(err.to_string().contains("no layer with id 99"), "{err}");
    ed.select(None);
    assert_eq!(ed.doc().selected, None);
    // The last undo step is still the third AddLayers, which restores its own selection.
    ed.undo();
    assert_eq!(ed.ids().len(), 2);
    assert_eq!(
        ed.doc().selected,
        Some(ed.ids()[1]),
        "the selection the step was taken with"
    );
    // Undo then redo is the identity, selection included.
    ed.redo();
    assert_eq!(ed.ids().len(), 3);
    assert_eq!(ed.doc().selected, None);
}

#[test]
fn visibility_toggles_and_undoes() {
    let (mut ed, [_, b, _]) = three_layers();
    let fx = ed.set_visible(b, false);
    assert!(fx.contains(&Effect::Render) && fx.contains(&Effect::LayersPanel));
    assert!(!ed.layer(b).visible);
    ed.undo();
    assert!(ed.layer(b).visible);
    ed.redo();
    assert!(!ed.layer(b).visible);
    // Setting the current value changes nothing and records nothing.
    assert!(ed.set_visible(b, false).is_empty());
    ed.send_err(EditorMessage::SetVisibility {
        id: LayerId(77),
        visible: true,
    });
}

#[test]
fn opacity_is_validated() {
    let (mut ed, [a, ..]) = three_layers();
    ed.set_opacity(a, 0.25);
    assert_eq!(ed.layer(a).opacity, 0.25);
    for bad in [f32::NAN, -0.01, 1.01, f32::INFINITY] {
        let err = ed.send_err(EditorMessage::SetOpacity {
            id: a,
            opacity: bad,
        });
        assert!(matches!(err, Error::InvalidOpacity { .. }), "{err}");
    }
    assert!(
        ed.send_err(EditorMessage::SetOpacity {
            id: LayerId(42),
            opacity: 0.5
        })
        .to_string()
        .starts_with("set opacity: no layer with id 42")
    );
    ed.set_opacity(a, 0.0);
    ed.set_opacity(a, 1.0);
    ed.undo();
    ed.undo();
    assert_eq!(ed.layer(a).opacity, 0.25);
}

#[test]
fn opacity_tweaks_share_pixel_buffers_with_the_history() {
    let (mut ed, [a, ..]) = three_layers();
    let pixels = Arc::clone(&ed.layer(a).image);
    for i in 0..50 {
        ed.set_opacity(a, i as f32 / 100.0);
    }
    // Every snapshot refers to the same buffer instead of copying it.
    assert!(Arc::ptr_eq(&pixels, &ed.layer(a).image));
    assert!(Arc::strong_count(&pixels) > 50);
    for _ in 0..50 {
        ed.undo();
    }
    assert!(Arc::ptr_eq(&pixels, &ed.layer(a).image));
    assert_eq!(ed.layer(a).opacity, 1.0);
}

#[test]
fn rename_does_not_ask_for_a_redraw() {
    let (mut ed, [_, b, _]) = three_layers();
    let fx = ed.rename(b, "Ébène 🌙 <&>");
    assert_eq!(ed.layer(b).name, "Ébène 🌙 <&>");
    assert!(!fx.contains(&Effect::Render) && fx.contains(&Effect::LayersPanel));
    ed.undo();
    assert_eq!(ed.layer(b).name, "mid");
}

#[test]
fn reorder_moves_by_index() {
    let (mut ed, [a, b, c]) = three_layers();
    ed.reorder(0, 2);
    assert_eq!(ed.ids(), [b, c, a]);
    ed.reorder(2, 1);
    assert_eq!(ed.ids(), [b, a, c]);
    assert!(ed.reorder(1, 1).is_empty());
    let err = ed.send_err(EditorMessage::Reorder { from: 0, to: 3 });
    assert_eq!(
        err.to_string(),
        "reorder: layer index 3 is out of range (the document has 3 layers, indices 0..3)"
    );
    ed.undo();
    ed.undo();
    assert_eq!(ed.ids(), [a, b, c]);
}

#[test]
fn duplicate_shares_pixels_and_goes_above() {
    let (mut ed, [a, b, c]) = three_layers();
    ed.set_opacity(b, 0.5);
    let copy = ed.duplicate(b);
    assert_eq!(ed.ids(), [a, b, copy, c]);
    assert!(![a, b, c].contains(&copy));
    let (orig, dup) = (ed.layer(b), ed.layer(copy));
    assert_eq!(dup.name, "mid copy");
    assert_eq!((dup.opacity, dup.transform), (orig.opacity, orig.transform));
    assert!(Arc::ptr_eq(&orig.image, &dup.image));
    ed.undo();
    assert_eq!(ed.ids(), [a, b, c]);
    // Ids are never reused, even after undo.
    let again = ed.duplicate(b);
    assert_ne!(again, copy);
}

#[test]
fn delete_moves_the_selection_down() {
    let (mut ed, [a, b, c]) = three_layers();
    ed.select(Some(b));
    ed.delete(b);
    assert_eq!(ed.ids(), [a, c]);
    assert_eq!(ed.doc().selected, Some(a));
    ed.select(Some(a));
    ed.delete(a);
    assert_eq!(ed.doc().selected, Some(c));
    ed.delete(c);
    assert_eq!(ed.doc().selected, None);
    ed.send_err(EditorMessage::Delete { id: c });
    ed.undo();
    ed.undo();
    ed.undo();
    assert_eq!(ed.ids(), [a, b, c]);
    assert_eq!(ed.doc().selected, Some(b));
}

#[test]
fn merge_down_looks_the_same_and_keeps_the_lower_identity() {
    let (mut ed, [a, b, c]) = three_layers();
    ed.set_opacity(c, 0.6);
    ed.move_by(c, 3, 0); // top now sticks out past mid's right edge: union bounds
    let before = ed.editor.composite();
    ed.merge_down(c);
    assert_eq!(ed.ids(), [a, b]);
    let merged = ed.layer(b);
    assert_eq!(merged.name, "mid");
    assert_eq!((merged.opacity, merged.transform.scale), (1.0, 1.0));
    assert_eq!((merged.transform.x, merged.transform.y), (2, 2));
    assert_eq!(merged.image.dimensions(), (6, 4));
    assert_eq!(ed.doc().selected, Some(b));
    assert_eq!(ed.editor.composite(), before);

    let err = ed.send_err(EditorMessage::MergeDown { id: a });
    assert!(err.to_string().contains("bottom layer"), "{err}");
    ed.set_visible(a, false);
    let err = ed.send_err(EditorMessage::MergeDown { id: b });
    assert!(err.to_string().contains("visible"), "{err}");
    ed.undo();
    ed.undo();
    assert_eq!(ed.ids(), [a, b, c]);
}

#[test]
fn move_and_nudge_translate() {
    let (mut ed, [a, b, _]) = three_layers();
    ed.move_by(b, -5, 7);
    assert_eq!((ed.layer(b).transform.x, ed.layer(b).transform.y), (-3, 9));
    let err = {
        ed.select(None);
        ed.send_err(EditorMessage::Nudge { dx: 1, dy: 0 })
    };
    assert!(
        matches!(err, Error::NoSelection { action: "nudge" }),
        "{err}"
    );
    ed.select(Some(a));
    ed.nudge(1, 0);
    ed.nudge(0, -10);
    assert_eq!((ed.layer(a).transform.x, ed.layer(a).transform.y), (1, -10));
    let err = ed.send_err(EditorMessage::Move {
        id: a,
        dx: i32::MAX,
        dy: 0,
    });
    assert!(matches!(err, Error::OffsetOverflow { .. }), "{err}");
    assert!(ed.move_by(a, 0, 0).is_empty());
    ed.undo();
    ed.undo();
    ed.undo();
    assert_eq!(
        ed.layer(b).transform,
        Transform {
            x: 2,
            y: 2,
            scale: 1.0
        }
    );
}

#[test]
fn scale_is_validated_and_composites_bigger() {
    let mut ed = TestEditor::new(8, 8);
    let a = ed.add_solid("a", 2, 2, [10, 20, 30, 255], 1, 1);
    ed.scale(a, 2.0);
    assert_eq!(ed.layer(a).bounds().width, 4);
    let out = ed.editor.composite();
    for y in 0..8 {
        for x in 0..8 {
            let inside = (1..5).contains(&x) && (1..5).contains(&y);
            let want = if inside {
                Rgba([10, 20, 30, 255])
            } else {
                Rgba([0, 0, 0, 0])
            };
            assert_eq!(*out.get_pixel(x, y), want, "({x}, {y})");
        }
    }
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY, 65.0, 0.001] {
        let err = ed.send_err(EditorMessage::SetScale { id: a, scale: bad });
        assert!(matches!(err, Error::InvalidScale { .. }), "{err}");
    }
    ed.undo();
    assert_eq!(ed.layer(a).transform.scale, 1.0);
}

#[test]
fn replace_with_sublayers_places_them_in_the_parent_frame() {
    let (mut ed, [a, b, c]) = three_layers();
    ed.scale(b, 2.0);
    ed.set_opacity(b, 0.5);
    ed.set_visible(b, false);
    let subs = vec![
        NewLayer {
            name: "b/1".into(),
            image: solid(4, 4, [9; 4]),
            x: 0,
            y: 0,
        },
        NewLayer {
            name: "b/2".into(),
            image: solid(1, 1, [8; 4]),
            x: 3,
            y: 1,
        },
    ];
    ed.replace_with_sublayers(b, subs);
    assert_eq!(ed.names(), ["bg", "b/1", "b/2", "top"]);
    let ids = ed.ids();
    assert!(!ids.contains(&b));
    let s2 = ed.layer(ids[2]);
    assert_eq!(
        s2.transform,
        Transform {
            x: 2 + 6,
            y: 2 + 2,
            scale: 2.0
        }
    );
    assert_eq!((s2.opacity, s2.visible), (0.5, false));
    assert_eq!(ed.doc().selected, Some(ids[2]));

    let err = ed.send_err(EditorMessage::ReplaceWithSublayers {
        id: a,
        layers: vec![],
    });
    assert!(matches!(err, Error::NoSublayers { .. }), "{err}");
    ed.send_err(EditorMessage::ReplaceWithSublayers {
        id: b,
        layers: vec![NewLayer::new("x", solid(1, 1, [0; 4]))],
    });
    ed.undo();
    assert_eq!(ed.ids(), [a, b, c]);
}

/// What the page does with "Decompose layer": the layer's own pixels are decomposed, the
/// sub-layers come back at the layer's image size (offset 0), and replace it in its place in
/// one undo step.
#[test]
fn decomposing_a_layer_replaces_it_in_place_and_undo_restores_it_exactly() {
    let (mut ed, [a, b, c]) = three_layers();
    // The middle layer is moved and scaled; its image is a left half of one colour over a
    // full square of another. (Its opacity would be given to each sub-layer, which is not the
    // same look as one layer at that opacity: see `replace_with_sublayers_places_them…`.)
    ed.move_by(b, 1, -1);
    ed.scale(b, 1.5);
    let mut half = solid(4, 4, [0, 0, 0, 0]);
    for y in 0..4 {
        for x in 0..2 {
            half.put_pixel(x, y, Rgba([200, 100, 0, 255]));
        }
    }
    let full = solid(4, 4, [0, 255, 0, 255]);
    // Make the parent look exactly like `half` over `full`.
    let parent = {
        let mut p = full.clone();
        for y in 0..4 {
            for x in 0..2 {
                p.put_pixel(x, y, Rgba([200, 100, 0, 255]));
            }
        }
        p
    };
    ed.replace_with_sublayers(b, vec![NewLayer::new("b", parent)]);
    let b = ed.ids()[1];
    let before = ed.doc().clone();
    let composite_before = ed.doc().composite();
    let parent_t = ed.layer(b).transform;
    assert_eq!(
        parent_t,
        Transform {
            x: 3,
            y: 1,
            scale: 1.5
        }
    );

    let fx = ed.send(EditorMessage::ReplaceWithSublayers {
        id: b,
        layers: NewLayer::from_decomposition("b ·", vec![full, half]),
    });
    assert!(fx.contains(&Effect::LayersPanel));
    // Same place in the stack, bottom to top as the pipeline returns them.
    assert_eq!(ed.names(), ["bg", "b · 1", "b · 2", "top"]);
    let ids = ed.ids();
    assert_eq!((ids[0], ids[3]), (a, c));
    for sub in &ids[1..3] {
        let l = ed.layer(*sub);
        assert_eq!(
            l.transform, parent_t,
            "sub-layers keep the layer's placement"
        );
        assert_eq!((l.opacity, l.visible), (1.0, true));
        assert!(*sub != b && *sub != a && *sub != c);
    }
    assert_eq!(ed.doc().selected, Some(ids[2]));
    let after = ed.doc().clone();
    // The sub-layers are the layer split in two: the picture has not changed (within one
    // 8-bit step where the 1.5× bilinear sampling meets the edge between the two colours:
    // sampled apart and composited vs sampled together).
    let now = ed.doc().composite();
    let worst = now
        .as_raw()
        .iter()
        .zip(composite_before.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap();
    assert!(worst <= 1, "the composite changed by {worst}");

    // One undo step brings the very same document back, ids and selection included; redo
    // brings the sub-layers back with their ids.
    ed.undo();
    assert_eq!(ed.doc(), &before);
    ed.redo();
    assert_eq!(ed.doc(), &after);
    ed.undo();
    assert_eq!(ed.doc(), &before);
    // A second decomposition after the undo gets fresh ids (never reused).
    ed.replace_with_sublayers(b, vec![NewLayer::new("again", solid(2, 2, [1; 4]))]);
    let again = ed.ids()[1];
    assert!(!ids.contains(&again) && again != b);
    assert!(!ed.doc().layers.iter().any(|l| l.id == b));
}

#[test]
fn undo_redo_sequences_and_redo_is_cleared_by_a_new_change() {
    let (mut ed, [a, b, c]) = three_layers();
    let start = ed.doc().clone();
    ed.set_opacity(a, 0.3);
    ed.rename(b, "renamed");
    ed.reorder(2, 0);
    ed.move_by(c, 1, 1);
    let end = ed.doc().clone();
    for _ in 0..4 {
        ed.undo();
    }
    assert_eq!(ed.doc(), &start);
    for _ in 0..4 {
        ed.redo();
    }
    assert_eq!(ed.doc(), &end);
    assert!(ed.redo().is_empty(), "nothing left to redo");

    ed.undo();
    ed.undo();
    assert!(ed.editor.can_redo());
    let fx = ed.set_visible(c, false);
    assert!(fx.contains(&Effect::History {
        can_undo: true,
        can_redo: false
    }));
    assert!(ed.redo().is_empty());

    // Undo past the beginning is a no-op, not an error.
    for _ in 0..10 {
        ed.undo();
    }
    assert!(ed.doc().layers.is_empty());
    assert!(ed.undo().is_empty());
}

#[test]
fn history_depth_is_bounded() {
    let mut ed = TestEditor {
        editor: Editor::with_history_depth(4, 4, 3).expect("size"),
    };
    let a = ed.add_solid("a", 1, 1, [1; 4], 0, 0);
    for i in 1..=5 {
        ed.move_by(a, i, 0);
    }
    let mut undone = 0;
    while !ed.undo().is_empty() {
        undone += 1;
    }
    assert_eq!(undone, 3);
    assert_eq!(ed.layer(a).transform.x, 1 + 2);
}

fn load_png(bytes: &[u8]) -> RgbaImage {
    image::load_from_memory(bytes)
        .expect("fixture PNG decodes")
        .to_rgba8()
}

/// The composite matches PIL `Image.alpha_composite` folded bottom to top, within 1/255.
/// Fixture: `tests/fixtures/editor/gen_composite.py` (Pillow 12.0.0).
#[test]
fn composite_matches_pil_alpha_composite() {
    let layers = [
        load_png(include_bytes!("fixtures/editor/layer0.png")),
        load_png(include_bytes!("fixtures/editor/layer1.png")),
        load_png(include_bytes!("fixtures/editor/layer2.png")),
        load_png(include_bytes!("fixtures/editor/layer3.png")),
    ];
    let want = load_png(include_bytes!("fixtures/editor/composite.png"));
    let mut ed = TestEditor::new(want.width(), want.height());
    ed.send(EditorMessage::AddLayers {
        layers: NewLayer::from_decomposition("L", layers.to_vec()),
    });
    let got = ed.editor.composite();
    let mut max = 0;
    for (g, w) in got.pixels().zip(want.pixels()) {
        for c in 0..4 {
            max = max.max((g[c] as i32 - w[c] as i32).abs());
        }
    }
    assert!(max <= 1, "max channel difference vs PIL is {max}/255");
}

#[test]
fn hit_testing_finds_the_topmost_non_transparent_visible_layer() {
    let (mut ed, [a, b, c]) = three_layers();
    let hit = |ed: &TestEditor, x: f64, y: f64| ed.editor.topmost_layer_at(x, y);
    assert_eq!(hit(&ed, 3.5, 3.5), Some(c));
    assert_eq!(hit(&ed, 2.0, 2.0), Some(b));
    assert_eq!(hit(&ed, 0.2, 7.9), Some(a));
    assert_eq!(hit(&ed, -0.1, 0.0), None);
    assert_eq!(hit(&ed, 8.0, 0.0), None);
    assert_eq!(hit(&ed, f64::NAN, 0.0), None);
    ed.set_visible(c, false);
    assert_eq!(hit(&ed, 3.5, 3.5), Some(b));
    ed.set_opacity(b, 0.0);
    assert_eq!(hit(&ed, 3.5, 3.5), Some(a));

    // A transparent pixel lets the hit fall through; scaling moves the hit area.
    let mut ed = TestEditor::new(8, 8);
    let below = ed.add_solid("below", 8, 8, [0, 0, 0, 255], 0, 0);
    let mut img = solid(2, 2, [255, 255, 255, 255]);
    img.put_pixel(1, 1, Rgba([255, 255, 255, 0]));
    let holed = ed.add("holed", img, 0, 0);
    assert_eq!(ed.editor.topmost_layer_at(1.5, 1.5), Some(below));
    assert_eq!(ed.editor.topmost_layer_at(0.5, 0.5), Some(holed));
    ed.scale(holed, 3.0);
    assert_eq!(ed.editor.topmost_layer_at(5.0, 0.5), Some(holed));
    assert_eq!(ed.editor.topmost_layer_at(5.5, 5.5), Some(below));
}

#[test]
fn replace_document_is_one_undo_step_that_restores_size_and_layers() {
    let (mut ed, [a, b, c]) = three_layers();
    let fx = ed.send(EditorMessage::ReplaceDocument {
        width: 3,
        height: 2,
        layers: vec![
            NewLayer::new("back", solid(3, 2, [1, 2, 3, 255])),
            NewLayer {
                x: 1,
                y: 1,
                ..NewLayer::new("front", solid(1, 1, [9, 9, 9, 255]))
            },
        ],
    });
    assert!(fx.contains(&Effect::Render) && fx.contains(&Effect::LayersPanel));
    assert_eq!((ed.doc().width, ed.doc().height), (3, 2));
    assert_eq!(ed.names(), ["back", "front"]);
    let ids = ed.ids();
    assert!(
        ids.iter().all(|id| ![a, b, c].contains(id)),
        "ids are never reused"
    );
    assert_eq!(ed.doc().selected, Some(ids[1]));
    assert_eq!(ed.layer(ids[1]).transform.x, 1);
    assert_eq!(*ed.doc().composite().get_pixel(1, 1), Rgba([9, 9, 9, 255]));

    ed.undo();
    assert_eq!((ed.doc().width, ed.doc().height), (8, 8));
    assert_eq!(ed.ids(), [a, b, c]);
    ed.redo();
    assert_eq!(ed.names(), ["back", "front"]);

    // Bad sizes and empty images are refused and change nothing.
    let err = ed.send_err(EditorMessage::ReplaceDocument {
        width: 0,
        height: 2,
        layers: vec![],
    });
    assert!(matches!(err, Error::DocumentSize { .. }), "{err}");
    let err = ed.send_err(EditorMessage::ReplaceDocument {
        width: 2,
        height: 2,
        layers: vec![NewLayer::new("nothing", RgbaImage::new(0, 0))],
    });
    assert!(matches!(err, Error::EmptyImage { .. }), "{err}");
    assert_eq!(ed.names(), ["back", "front"]);
}

#[test]
fn set_transform_moves_and_scales_in_one_step() {
    let (mut ed, [_, b, _]) = three_layers();
    let t = Transform {
        x: -1,
        y: 3,
        scale: 0.5,
    };
    ed.send(EditorMessage::SetTransform {
        id: b,
        transform: t,
    });
    assert_eq!(ed.layer(b).transform, t);
    ed.undo();
    assert_eq!(
        ed.layer(b).transform,
        Transform {
            x: 2,
            y: 2,
            scale: 1.0
        }
    );
    let err = ed.send_err(EditorMessage::SetTransform {
        id: b,
        transform: Transform {
            scale: f32::NAN,
            ..t
        },
    });
    assert!(matches!(err, Error::InvalidScale { .. }), "{err}");
}

#[test]
fn download_names_are_sanitized() {
    use qwen_layered_web::editor::{ExportFormat, sanitize_file_name};
    assert_eq!(sanitize_file_name("photo", "x"), "photo");
    assert_eq!(sanitize_file_name("../../etc/passwd", "x"), "etc_passwd");
    assert_eq!(
        sanitize_file_name("<img src=x onerror=alert(1)>", "x"),
        "img src=x onerror=alert(1)"
    );
    assert_eq!(sanitize_file_name("a\u{202e}gnp.exe", "x"), "a_gnp.exe");
    assert_eq!(sanitize_file_name(" ... ", "fallback"), "fallback");
    assert_eq!(sanitize_file_name("con", "x"), "con_");
    assert_eq!(sanitize_file_name("COM1.txt", "x"), "COM1.txt_");
    assert_eq!(sanitize_file_name("a\n\tb   c", "x"), "a_b c");
    assert_eq!(
        sanitize_file_name(&"é".repeat(200), "x").chars().count(),
        80
    );
    assert_eq!(sanitize_file_name("Ünïcode 名前", "x"), "Ünïcode 名前");

    let (mut ed, [a, ..]) = three_layers();
    ed.rename(a, "sky/clouds: *big*");
    let doc = ed.doc();
    assert_eq!(
        ExportFormat::LayerPng(a).file_name(doc, "my photo.final"),
        "my photo.final-sky_clouds_ _big.png"
    );
    assert_eq!(ExportFormat::Psd.file_name(doc, ""), "layers.psd");
    assert_eq!(
        ExportFormat::CompositePng.file_name(doc, "x"),
        "x-composite.png"
    );
}
