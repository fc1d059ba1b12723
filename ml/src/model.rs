//! A trained model: everything needed to score new rows (structure,
//! weights, the standardisation, the threshold), and its file. The file
//! is `WARDENML`, a little-endian u32 header length, the header as JSON,
//! then the weights as little-endian f32: readable from any language.

use serde::{Deserialize, Serialize};

use crate::data::gather;
use crate::hyper::{Architecture, Hyper};
use crate::net::{Network, Work, score_with};
use crate::sentinel::Sentinel;

pub const MAGIC: &[u8; 8] = b"WARDENML";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    pub architecture: Architecture,
    pub hyperparameters: Hyper,
    pub features: Vec<String>,
    pub mean: Vec<f32>,
    pub sd: Vec<f32>,
    pub sequence_length: usize,
    /// A window is anomalous when its score exceeds this.
    pub threshold: f32,
    pub network: Option<serde_json::Value>,
    pub sentinel: Option<Sentinel>,
    pub parameters: usize,
}

#[derive(Debug, Clone)]
pub struct Model {
    pub architecture: Architecture,
    pub hyper: Hyper,
    pub features: Vec<String>,
    pub mean: Vec<f32>,
    pub sd: Vec<f32>,
    pub threshold: f32,
    pub network: Option<Network>,
    pub params: Vec<f32>,
    pub sentinel: Option<Sentinel>,
}

impl Model {
    pub fn sequence_length(&self) -> usize {
        self.hyper.sequence_length as usize
    }

    /// Trainable parameters (the sentinel's four numbers per feature).
    pub fn parameter_count(&self) -> usize {
        match &self.sentinel {
            Some(s) => 4 * s.median.len(),
            None => self.params.len(),
        }
    }

    /// Raw rows (complete, in `features` order) standardised as the
    /// model was trained: what [`Model::score`] takes, and what the ONNX
    /// export does first.
    pub fn standardise(&self, raw: &[f32]) -> Vec<f32> {
        let f = self.features.len();
        raw.chunks_exact(f)
            .flat_map(|row| (0..f).map(move |k| (row[k] - self.mean[k]) / self.sd[k]))
            .collect()
    }

    /// Scores standardised windows (N×T×F, back to back).
    pub fn score(&self, windows: &[f32]) -> Vec<f32> {
        let (t, f) = (self.sequence_length(), self.features.len());
        let per = t * f;
        let n = windows.len() / per;
        let window = |i: usize| &windows[i * per..(i + 1) * per];
        if let Some(s) = &self.sentinel {
            return (0..n).map(|i| s.score(window(i))).collect();
        }
        let Some(net) = &self.network else {
            return vec![0.0; n];
        };
        let (mut out, mut buf, mut ws) = (Vec::with_capacity(n), Vec::new(), Work::default());
        let ids: Vec<usize> = (0..n).collect();
        for chunk in ids.chunks(256) {
            gather(window, chunk, t, f, &mut buf);
            score_with(net, &self.params, &buf, chunk.len(), &mut ws, &mut out);
        }
        out
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let header = Header {
            format: 1,
            architecture: self.architecture,
            hyperparameters: self.hyper.clone(),
            features: self.features.clone(),
            mean: self.mean.clone(),
            sd: self.sd.clone(),
            sequence_length: self.sequence_length(),
            threshold: self.threshold,
            network: self
                .network
                .as_ref()
                .map(|n| serde_json::to_value(n).expect("a network serialises")),
            sentinel: self.sentinel.clone(),
            parameters: self.params.len(),
        };
        let json = serde_json::to_vec(&header).expect("a header serialises");
        let mut out = Vec::with_capacity(12 + json.len() + 4 * self.params.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(json.len() as u32).to_le_bytes());
        out.extend_from_slice(&json);
        for p in &self.params {
            out.extend_from_slice(&p.to_le_bytes());
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Model, String> {
        let bad = |why: &str| format!("not a Warden model file: {why}");
        if bytes.len() < 12 || &bytes[..8] != MAGIC {
            return Err(bad("no WARDENML signature"));
        }
        let len = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes")) as usize;
        let json = bytes
            .get(12..12 + len)
            .ok_or_else(|| bad("truncated header"))?;
        let h: Header = serde_json::from_slice(json).map_err(|e| bad(&e.to_string()))?;
        let rest = &bytes[12 + len..];
        if rest.len() != 4 * h.parameters {
            return Err(bad("weights do not match the header"));
        }
        let params = rest
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let network = match h.network {
            Some(v) => Some(serde_json::from_value::<Network>(v).map_err(|e| bad(&e.to_string()))?),
            None => None,
        };
        if network.as_ref().is_some_and(|n| n.len != h.parameters) {
            return Err(bad("weights do not match the network"));
        }
        Ok(Model {
            architecture: h.architecture,
            hyper: h.hyperparameters,
            features: h.features,
            mean: h.mean,
            sd: h.sd,
            threshold: h.threshold,
            network,
            params,
            sentinel: h.sentinel,
        })
    }
}
