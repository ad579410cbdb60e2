//! The decompose form's settings, with the reference's defaults, and the two presets the page
//! offers with what they cost. Pure data and arithmetic; the page fills its form from it.

/// What a decomposition run is asked to do. Defaults are the reference's
/// (`QwenImageLayeredPipeline` as the official app calls it).
#[derive(Clone, Debug, PartialEq)]
pub struct RunSettings {
    /// Number of output layers, `1..=10` (default 4).
    pub layers: u32,
    /// Working resolution bucket: 640 (default) or 1024.
    pub resolution: u32,
    /// Denoising steps (default 50).
    pub steps: u32,
    /// True classifier-free guidance scale (default 4.0; at most 1 means no guidance pass).
    pub true_cfg_scale: f32,
    /// Rescale the guided prediction to the conditional one's norm (default on, as the
    /// official app runs it).
    pub cfg_normalize: bool,
    /// Noise seed.
    pub seed: u64,
    /// Prompt; empty means the model captions the image itself.
    pub prompt: String,
}

impl Default for RunSettings {
    fn default() -> Self {
        RunSettings {
            layers: 4,
            resolution: 640,
            steps: 50,
            true_cfg_scale: 4.0,
            cfg_normalize: true,
            seed: 0,
            prompt: String::new(),
        }
    }
}

/// A named set of values for the speed-relevant fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    /// 640 px, 20 steps, guidance kept.
    Fast,
    /// 1024 px, 50 steps, guidance kept.
    Quality,
}

/// The transformer work a run costs: passes of the transformer over the image tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cost {
    /// Transformer forward passes: steps × (2 with guidance, else 1).
    pub passes: u32,
    /// Image tokens per pass: (layers + 2) · (resolution / 16)² (N layers, the composite and
    /// the condition image).
    pub image_tokens: u64,
}

impl Cost {
    /// Work relative to `base`, counting passes × tokens (the linear layers; attention grows
    /// faster, with the square of the tokens, so larger inputs cost more than this says).
    pub fn relative_to(&self, base: &Cost) -> f64 {
        (self.passes as f64 * self.image_tokens as f64)
            / (base.passes as f64 * base.image_tokens as f64).max(1.0)
    }
}

impl RunSettings {
    /// The settings with `preset`'s values (layers, seed and prompt are kept).
    pub fn with_preset(&self, preset: Preset) -> RunSettings {
        let (resolution, steps) = match preset {
            Preset::Fast => (640, 20),
            Preset::Quality => (1024, 50),
        };
        RunSettings {
            resolution,
            steps,
            true_cfg_scale: 4.0,
            cfg_normalize: true,
            ..self.clone()
        }
    }

    /// What running these settings costs.
    pub fn cost(&self) -> Cost {
        let side = (self.resolution / 16) as u64;
        Cost {
            passes: self.steps * if self.true_cfg_scale > 1.0 { 2 } else { 1 },
            image_tokens: (self.layers as u64 + 2) * side * side,
        }
    }

    /// One sentence about the cost, relative to the reference defaults with the same layers.
    pub fn describe_cost(&self) -> String {
        let cost = self.cost();
        let base = RunSettings {
            layers: self.layers,
            ..RunSettings::default()
        }
        .cost();
        let r = cost.relative_to(&base);
        let relative = if (r - 1.0).abs() < 0.005 {
            "the same work as the default".to_owned()
        } else if r < 1.0 {
            format!("about {}× less work than the default", times(1.0 / r))
        } else {
            format!(
                "at least {}× the default's work (attention grows faster)",
                times(r)
            )
        };
        format!(
            "{} steps × {} pass{} over {} image tokens at {}²: {relative}.",
            self.steps,
            cost.passes / self.steps.max(1),
            if cost.passes / self.steps.max(1) == 1 {
                ""
            } else {
                "es"
            },
            cost.image_tokens,
            self.resolution,
        )
    }
}

/// A ratio as a person reads it: one decimal under 10 ("2.5"), whole above ("10,000").
fn times(r: f64) -> String {
    if r < 9.95 {
        return format!("{r:.1}");
    }
    let whole = format!("{:.0}", r);
    let mut out = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_reference_ones() {
        let s = RunSettings::default();
        assert_eq!((s.layers, s.resolution, s.steps), (4, 640, 50));
        assert_eq!((s.true_cfg_scale, s.cfg_normalize), (4.0, true));
        assert!(s.prompt.is_empty());
        // 6 slots of 40x40 tokens, 100 passes.
        assert_eq!(
            s.cost(),
            Cost {
                passes: 100,
                image_tokens: 9600
            }
        );
        assert!(s.describe_cost().contains("the same work as the default"));
    }

    #[test]
    fn presets_state_their_cost() {
        let s = RunSettings {
            layers: 3,
            seed: 7,
            ..RunSettings::default()
        };
        let fast = s.with_preset(Preset::Fast);
        assert_eq!(
            (fast.resolution, fast.steps, fast.layers, fast.seed),
            (640, 20, 3, 7)
        );
        assert!(
            fast.describe_cost().contains("2.5× less work"),
            "{}",
            fast.describe_cost()
        );
        // The tiny test model's settings: a whole number, grouped.
        let tiny = RunSettings {
            layers: 2,
            resolution: 32,
            steps: 2,
            ..RunSettings::default()
        };
        assert!(
            tiny.describe_cost()
                .ends_with("at 32²: about 10,000× less work than the default."),
            "{}",
            tiny.describe_cost()
        );
        assert_eq!(
            (times(9.94), times(12.4), times(1234.0)),
            ("9.9".into(), "12".into(), "1,234".into())
        );
        let quality = s.with_preset(Preset::Quality);
        assert_eq!((quality.resolution, quality.steps), (1024, 50));
        // 1024² has 2.56× the tokens of 640².
        assert!(
            quality.describe_cost().contains("at least 2.6×"),
            "{}",
            quality.describe_cost()
        );
        let no_cfg = RunSettings {
            true_cfg_scale: 1.0,
            ..RunSettings::default()
        };
        assert_eq!(no_cfg.cost().passes, 50);
    }
}
