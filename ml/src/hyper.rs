//! Training hyperparameters: forge's documented set, with Warden's
//! defaults and bounds, plus the few Warden adds (validation split,
//! window cap, threshold percentile, the sentinel's band, seed).

use serde::{Deserialize, Serialize};

/// What Warden trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// LSTM encoder → last hidden state (→ optional linear bottleneck) →
    /// repeated at every step → LSTM decoder → linear: reconstructs the
    /// window; the score is the mean squared reconstruction error.
    LstmAutoencoder,
    /// GRU over steps 0..T−1 → linear at every step: predicts the next
    /// row; the score is the mean squared prediction error.
    GruPredictor,
    /// No network: per-feature median and MAD of the values and of their
    /// one-step differences on the training rows; a window's score is its
    /// largest robust z-score, |x − median| / (1.4826·MAD), over both;
    /// the threshold is set from held-out scores, at least
    /// `threshold_mads` (default 4). See [`crate::sentinel`].
    Sentinel,
}

impl Architecture {
    pub const NAMES: [&'static str; 3] = ["lstm_autoencoder", "gru_predictor", "sentinel"];

    pub fn parse(s: &str) -> Option<Architecture> {
        match s {
            "lstm_autoencoder" => Some(Architecture::LstmAutoencoder),
            "gru_predictor" => Some(Architecture::GruPredictor),
            "sentinel" => Some(Architecture::Sentinel),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// How the loss compares output and target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    Mse,
    Mae,
    /// Smooth L1 with δ = 1.
    Huber,
}

impl Loss {
    pub const NAMES: [&'static str; 3] = ["mse", "mae", "huber"];

    pub fn parse(s: &str) -> Option<Loss> {
        match s.to_ascii_lowercase().as_str() {
            "mse" => Some(Loss::Mse),
            "mae" | "l1" => Some(Loss::Mae),
            "huber" | "smooth_l1" => Some(Loss::Huber),
            _ => None,
        }
    }

    /// The loss of one difference and its derivative.
    #[inline]
    pub fn of(self, d: f32) -> (f32, f32) {
        match self {
            Loss::Mse => (d * d, 2.0 * d),
            Loss::Mae => (d.abs(), d.signum()),
            Loss::Huber if d.abs() < 1.0 => (0.5 * d * d, d),
            Loss::Huber => (d.abs() - 0.5, d.signum()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Hyper {
    pub learning_rate: f64,
    pub batch_size: u32,
    pub epochs: u32,
    pub hidden_dim: u32,
    /// The autoencoder's code size (a linear layer after the encoder);
    /// none: the code is the encoder's last hidden state. Other
    /// architectures accept and record it (clients send forge's whole
    /// set) but have no bottleneck.
    pub bottleneck_dim: Option<u32>,
    pub num_layers: u32,
    pub sequence_length: u32,
    /// Between stacked recurrent layers, while training (as PyTorch).
    pub dropout: f64,
    pub optimizer: String,
    pub loss: String,
    /// L2 (adam, sgd) or decoupled (adamw; default 0.01) weight decay.
    pub weight_decay: Option<f64>,
    /// The share of rows, at the end, held out for validation.
    pub validation_split: f64,
    /// Training windows per epoch at most, their starts evenly spaced.
    pub max_windows: u32,
    /// The anomaly threshold: this percentile of held-out normal scores.
    pub threshold_percentile: f64,
    /// The sentinel's least threshold, in MADs.
    pub threshold_mads: f64,
    pub seed: u64,
}

impl Default for Hyper {
    fn default() -> Self {
        Hyper {
            learning_rate: 1e-3,
            batch_size: 32,
            epochs: 20,
            hidden_dim: 64,
            bottleneck_dim: None,
            num_layers: 1,
            sequence_length: 60,
            dropout: 0.0,
            optimizer: "adam".into(),
            loss: "mse".into(),
            weight_decay: None,
            validation_split: 0.2,
            max_windows: 2000,
            threshold_percentile: 99.0,
            threshold_mads: 4.0,
            seed: 42,
        }
    }
}

impl Hyper {
    /// Every reason the set is refused (empty: it is valid).
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut range = |name: &str, v: f64, lo: f64, hi: f64| {
            if !(v >= lo && v <= hi) {
                out.push(format!("{name} must be between {lo} and {hi} (got {v})"));
            }
        };
        range("learning_rate", self.learning_rate, 1e-7, 1.0);
        range("batch_size", self.batch_size as f64, 1.0, 4096.0);
        range("epochs", self.epochs as f64, 1.0, 10_000.0);
        range("hidden_dim", self.hidden_dim as f64, 1.0, 1024.0);
        range("num_layers", self.num_layers as f64, 1.0, 4.0);
        range("sequence_length", self.sequence_length as f64, 2.0, 2000.0);
        range("dropout", self.dropout, 0.0, 0.9);
        range("validation_split", self.validation_split, 0.05, 0.5);
        range("max_windows", self.max_windows as f64, 1.0, 1_000_000.0);
        range(
            "threshold_percentile",
            self.threshold_percentile,
            50.0,
            100.0,
        );
        range("threshold_mads", self.threshold_mads, 0.5, 100.0);
        if let Some(w) = self.weight_decay {
            range("weight_decay", w, 0.0, 1.0);
        }
        if let Some(b) = self.bottleneck_dim {
            range("bottleneck_dim", b as f64, 1.0, 1024.0);
        }
        if crate::optim::Kind::parse(&self.optimizer).is_none() {
            out.push(format!(
                "optimizer must be one of {} (got {:?})",
                crate::optim::Kind::NAMES.join(", "),
                self.optimizer
            ));
        }
        if Loss::parse(&self.loss).is_none() {
            out.push(format!(
                "loss must be one of {} (got {:?})",
                Loss::NAMES.join(", "),
                self.loss
            ));
        }
        out
    }

    pub fn loss_fn(&self) -> Loss {
        Loss::parse(&self.loss).unwrap_or(Loss::Mse)
    }

    pub fn optimizer_kind(&self) -> crate::optim::Kind {
        crate::optim::Kind::parse(&self.optimizer).unwrap_or(crate::optim::Kind::Adam)
    }

    pub fn decay(&self) -> f32 {
        self.weight_decay.unwrap_or(match self.optimizer_kind() {
            crate::optim::Kind::Adamw => 0.01,
            _ => 0.0,
        }) as f32
    }
}
