//! Optimisers over the flat parameter vector, with PyTorch's update rules
//! and defaults: Adam (β 0.9/0.999, ε 1e-8), AdamW (decoupled weight
//! decay), SGD with momentum 0.9. Their state is part of a checkpoint.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Adam,
    Adamw,
    Sgd,
}

impl Kind {
    pub const NAMES: [&'static str; 3] = ["adam", "adamw", "sgd"];

    pub fn parse(s: &str) -> Option<Kind> {
        match s.to_ascii_lowercase().as_str() {
            "adam" => Some(Kind::Adam),
            "adamw" => Some(Kind::Adamw),
            "sgd" => Some(Kind::Sgd),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Optimizer {
    pub kind: Kind,
    pub lr: f32,
    pub weight_decay: f32,
    /// Steps taken.
    pub t: u64,
    m: Vec<f32>,
    v: Vec<f32>,
}

const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const EPS: f32 = 1e-8;
const MOMENTUM: f32 = 0.9;

impl Optimizer {
    pub fn new(kind: Kind, lr: f32, weight_decay: f32, len: usize) -> Optimizer {
        Optimizer {
            kind,
            lr,
            weight_decay,
            t: 0,
            m: vec![0.0; len],
            v: if kind == Kind::Sgd {
                Vec::new()
            } else {
                vec![0.0; len]
            },
        }
    }

    /// One update of `p` by the gradient `g`.
    pub fn step(&mut self, p: &mut [f32], g: &[f32]) {
        self.t += 1;
        let (lr, wd) = (self.lr, self.weight_decay);
        match self.kind {
            Kind::Sgd => {
                for ((p, g), m) in p.iter_mut().zip(g).zip(&mut self.m) {
                    let g = g + wd * *p;
                    *m = MOMENTUM * *m + g;
                    *p -= lr * *m;
                }
            }
            Kind::Adam | Kind::Adamw => {
                let c1 = 1.0 - BETA1.powi(self.t.min(i32::MAX as u64) as i32);
                let c2 = 1.0 - BETA2.powi(self.t.min(i32::MAX as u64) as i32);
                let step = lr / c1;
                let c2s = c2.sqrt();
                let decoupled = self.kind == Kind::Adamw;
                for (((p, g), m), v) in p.iter_mut().zip(g).zip(&mut self.m).zip(&mut self.v) {
                    let g = if decoupled { *g } else { g + wd * *p };
                    if decoupled {
                        *p *= 1.0 - lr * wd;
                    }
                    *m = BETA1 * *m + (1.0 - BETA1) * g;
                    *v = BETA2 * *v + (1.0 - BETA2) * g * g;
                    *p -= step * *m / ((*v).sqrt() / c2s + EPS);
                }
            }
        }
    }
}
