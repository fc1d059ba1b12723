//! The two networks, built from stacks of recurrent layers, and the
//! trainer that runs batches through them: forward, loss, backward, one
//! optimiser step. Batches are time-major (T·B×F, see [`crate::data::gather`]).

use serde::{Deserialize, Serialize};

use crate::hyper::{Architecture, Hyper, Loss};
use crate::layers::{Gru, Input, Layout, Linear, Lstm, Scratch, Tape};
use crate::optim::Optimizer;
use crate::rng::Rng;

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum Cell {
    Lstm(Lstm),
    Gru(Gru),
}

impl Cell {
    fn hidden(&self) -> usize {
        match self {
            Cell::Lstm(l) => l.hidden,
            Cell::Gru(g) => g.hidden,
        }
    }
}

/// Recurrent layers on top of each other; dropout between them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stack {
    pub layers: Vec<Cell>,
}

/// A stack's buffers: tapes, each upper layer's input, dropout masks.
#[derive(Debug, Default, Clone)]
struct StackWork {
    tapes: Vec<Tape>,
    xin: Vec<Vec<f32>>,
    masks: Vec<Vec<f32>>,
    dh: Vec<f32>,
    dx: Vec<f32>,
}

impl Stack {
    fn new(layout: &mut Layout, lstm: bool, input: usize, hidden: usize, n: usize) -> Stack {
        let layers = (0..n)
            .map(|l| {
                let i = if l == 0 { input } else { hidden };
                if lstm {
                    Cell::Lstm(Lstm::new(layout, i, hidden))
                } else {
                    Cell::Gru(Gru::new(layout, i, hidden))
                }
            })
            .collect();
        Stack { layers }
    }

    fn hidden(&self) -> usize {
        self.layers.last().map_or(0, Cell::hidden)
    }

    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        p: &[f32],
        x: Input,
        t: usize,
        b: usize,
        ws: &mut StackWork,
        sc: &mut Scratch,
        dropout: Option<(f32, &mut Rng)>,
    ) {
        let n = self.layers.len();
        ws.tapes.resize_with(n, Tape::default);
        ws.xin.resize_with(n, Vec::new);
        ws.masks.resize_with(n, Vec::new);
        let mut dropout = dropout;
        for (l, cell) in self.layers.iter().enumerate() {
            let StackWork {
                tapes, xin, masks, ..
            } = ws;
            let input = if l == 0 { x } else { Input::Seq(&xin[l]) };
            match (cell, input) {
                (Cell::Lstm(c), input) => c.forward(p, input, t, b, &mut tapes[l], sc),
                (Cell::Gru(c), Input::Seq(x)) => c.forward(p, x, t, b, &mut tapes[l], sc),
                (Cell::Gru(_), Input::Repeat(_)) => unreachable!("GRU stacks take sequences"),
            }
            if l + 1 < n {
                let out = tapes[l].output(b, cell.hidden());
                let next = &mut xin[l + 1];
                next.clear();
                next.extend_from_slice(out);
                let mask = &mut masks[l + 1];
                mask.clear();
                if let Some((rate, rng)) = dropout.as_mut().filter(|(r, _)| *r > 0.0) {
                    let keep = 1.0 / (1.0 - *rate);
                    mask.extend(
                        next.iter()
                            .map(|_| if rng.unit() < *rate { 0.0 } else { keep }),
                    );
                    for (v, m) in next.iter_mut().zip(mask.iter()) {
                        *v *= m;
                    }
                }
            }
        }
    }

    /// The top layer's output sequence (T·B×H).
    fn output<'a>(&self, ws: &'a StackWork, b: usize) -> &'a [f32] {
        ws.tapes[self.layers.len() - 1].output(b, self.hidden())
    }

    /// The top layer's hidden state after the last step (B×H).
    fn last<'a>(&self, ws: &'a StackWork, t: usize, b: usize) -> &'a [f32] {
        let h = self.hidden();
        &ws.tapes[self.layers.len() - 1].h[t * b * h..(t + 1) * b * h]
    }

    /// Backpropagates the gradient on the top layer's outputs (`ws.dh`,
    /// T·B×H) down the stack; the input's gradient lands in `dx`.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        p: &[f32],
        g: &mut [f32],
        x: Input,
        t: usize,
        b: usize,
        ws: &mut StackWork,
        sc: &mut Scratch,
        dx: Option<&mut [f32]>,
    ) {
        let mut dx = dx;
        for (l, cell) in self.layers.iter().enumerate().rev() {
            let StackWork {
                tapes,
                xin,
                masks,
                dh,
                dx: below,
            } = ws;
            let input = if l == 0 { x } else { Input::Seq(&xin[l]) };
            let out: Option<&mut [f32]> = if l == 0 {
                dx.take()
            } else {
                below.clear();
                below.resize(t * b * self.layers[l - 1].hidden(), 0.0);
                Some(below.as_mut_slice())
            };
            match (cell, input) {
                (Cell::Lstm(c), input) => c.backward(p, g, input, t, b, &tapes[l], dh, out, sc),
                (Cell::Gru(c), Input::Seq(x)) => c.backward(p, g, x, t, b, &tapes[l], dh, out, sc),
                (Cell::Gru(_), Input::Repeat(_)) => unreachable!("GRU stacks take sequences"),
            }
            if l > 0 {
                if !masks[l].is_empty() {
                    for (d, m) in below.iter_mut().zip(masks[l].iter()) {
                        *d *= m;
                    }
                }
                std::mem::swap(dh, below);
            }
        }
    }
}

/// A network's structure (where each weight lies in the flat vector).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Body {
    Autoencoder {
        encoder: Stack,
        bottleneck: Option<Linear>,
        decoder: Stack,
        out: Linear,
    },
    Predictor {
        stack: Stack,
        out: Linear,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Network {
    pub architecture: Architecture,
    pub features: usize,
    pub sequence_length: usize,
    pub body: Body,
    /// Parameters in all.
    pub len: usize,
}

impl Network {
    /// The structure for `features` inputs, and its initial weights.
    /// `None` for the sentinel, which has no network.
    pub fn new(
        arch: Architecture,
        h: &Hyper,
        features: usize,
        rng: &mut Rng,
    ) -> Option<(Network, Vec<f32>)> {
        let mut layout = Layout::default();
        let (hid, n) = (h.hidden_dim as usize, h.num_layers as usize);
        let body = match arch {
            Architecture::LstmAutoencoder => {
                let encoder = Stack::new(&mut layout, true, features, hid, n);
                let bottleneck = h
                    .bottleneck_dim
                    .map(|d| Linear::new(&mut layout, hid, d as usize));
                let code = bottleneck.map_or(hid, |b| b.output);
                let decoder = Stack::new(&mut layout, true, code, hid, n);
                let out = Linear::new(&mut layout, hid, features);
                Body::Autoencoder {
                    encoder,
                    bottleneck,
                    decoder,
                    out,
                }
            }
            Architecture::GruPredictor => {
                let stack = Stack::new(&mut layout, false, features, hid, n);
                let out = Linear::new(&mut layout, hid, features);
                Body::Predictor { stack, out }
            }
            Architecture::Sentinel => return None,
        };
        let params = layout.init(rng);
        Some((
            Network {
                architecture: arch,
                features,
                sequence_length: h.sequence_length as usize,
                body,
                len: layout.len,
            },
            params,
        ))
    }
}

/// Buffers of one pass, reused from batch to batch.
#[derive(Debug, Default, Clone)]
pub struct Work {
    a: StackWork,
    b: StackWork,
    sc: Scratch,
    code: Vec<f32>,
    y: Vec<f32>,
    dy: Vec<f32>,
    dcode: Vec<f32>,
    dz: Vec<f32>,
}

/// What a batch's forward pass computed.
struct Pass {
    /// Output steps compared with targets: the autoencoder compares all
    /// T steps with the input, the predictor steps 1..T with its outputs
    /// for 0..T−1.
    steps: usize,
    target_offset: usize,
}

impl Network {
    fn forward(
        &self,
        p: &[f32],
        x: &[f32],
        b: usize,
        ws: &mut Work,
        dropout: Option<(f32, &mut Rng)>,
    ) -> Pass {
        let (t, f) = (self.sequence_length, self.features);
        match &self.body {
            Body::Autoencoder {
                encoder,
                bottleneck,
                decoder,
                out,
            } => {
                let mut dropout = dropout;
                let first = dropout.as_mut().map(|(rate, rng)| (*rate, &mut **rng));
                encoder.forward(p, Input::Seq(x), t, b, &mut ws.a, &mut ws.sc, first);
                let z = encoder.last(&ws.a, t, b);
                match bottleneck {
                    Some(bn) => bn.forward(p, z, b, &mut ws.code),
                    None => {
                        ws.code.clear();
                        ws.code.extend_from_slice(z);
                    }
                }
                decoder.forward(
                    p,
                    Input::Repeat(&ws.code),
                    t,
                    b,
                    &mut ws.b,
                    &mut ws.sc,
                    dropout,
                );
                out.forward(p, decoder.output(&ws.b, b), t * b, &mut ws.y);
                Pass {
                    steps: t,
                    target_offset: 0,
                }
            }
            Body::Predictor { stack, out } => {
                let steps = t - 1;
                stack.forward(
                    p,
                    Input::Seq(&x[..steps * b * f]),
                    steps,
                    b,
                    &mut ws.a,
                    &mut ws.sc,
                    dropout,
                );
                out.forward(p, stack.output(&ws.a, b), steps * b, &mut ws.y);
                Pass {
                    steps,
                    target_offset: b * f,
                }
            }
        }
    }

    fn backward(&self, p: &[f32], g: &mut [f32], x: &[f32], b: usize, ws: &mut Work) {
        let t = self.sequence_length;
        match &self.body {
            Body::Autoencoder {
                encoder,
                bottleneck,
                decoder,
                out,
            } => {
                let Work {
                    a,
                    b: dec,
                    sc,
                    code,
                    dy,
                    dcode,
                    dz,
                    ..
                } = ws;
                let mut dh = std::mem::take(&mut dec.dh);
                out.backward(p, g, decoder.output(dec, b), t * b, dy, Some(&mut dh));
                dec.dh = dh;
                dcode.clear();
                dcode.resize(code.len(), 0.0);
                decoder.backward(
                    p,
                    g,
                    Input::Repeat(code),
                    t,
                    b,
                    dec,
                    sc,
                    Some(dcode.as_mut_slice()),
                );
                let h = encoder.hidden();
                match bottleneck {
                    Some(bn) => bn.backward(p, g, encoder.last(a, t, b), b, dcode, Some(dz)),
                    None => {
                        dz.clear();
                        dz.extend_from_slice(dcode);
                    }
                }
                a.dh.clear();
                a.dh.resize(t * b * h, 0.0);
                a.dh[(t - 1) * b * h..].copy_from_slice(dz);
                encoder.backward(p, g, Input::Seq(x), t, b, a, sc, None);
            }
            Body::Predictor { stack, out } => {
                let steps = t - 1;
                let Work { a, sc, dy, .. } = ws;
                let mut dh = std::mem::take(&mut a.dh);
                out.backward(p, g, stack.output(a, b), steps * b, dy, Some(&mut dh));
                a.dh = dh;
                let f = self.features;
                stack.backward(p, g, Input::Seq(&x[..steps * b * f]), steps, b, a, sc, None);
            }
        }
    }

    /// Mean loss of a batch; with `grad`, also fills `ws.dy` with its
    /// gradient on the outputs.
    fn loss(&self, x: &[f32], b: usize, pass: &Pass, loss: Loss, ws: &mut Work, grad: bool) -> f32 {
        let n = pass.steps * b * self.features;
        let target = &x[pass.target_offset..pass.target_offset + n];
        let scale = 1.0 / n as f32;
        if grad {
            ws.dy.clear();
            ws.dy.resize(n, 0.0);
        }
        let mut total = 0.0f64;
        for (k, (y, x)) in ws.y[..n].iter().zip(target).enumerate() {
            let (l, d) = loss.of(y - x);
            total += l as f64;
            if grad {
                ws.dy[k] = d * scale;
            }
        }
        (total / n as f64) as f32
    }

    /// Each window's mean squared error (its anomaly score).
    fn window_scores(&self, x: &[f32], b: usize, pass: &Pass, ws: &Work, out: &mut Vec<f32>) {
        let f = self.features;
        let first = out.len();
        out.resize(first + b, 0.0);
        for s in 0..pass.steps {
            for w in 0..b {
                let at = (s * b + w) * f;
                let y = &ws.y[at..at + f];
                let target = &x[pass.target_offset + at..pass.target_offset + at + f];
                out[first + w] += y
                    .iter()
                    .zip(target)
                    .map(|(y, x)| (y - x) * (y - x))
                    .sum::<f32>();
            }
        }
        let per = (pass.steps * f) as f32;
        for v in &mut out[first..] {
            *v /= per;
        }
    }
}

/// A network being trained: its weights, gradients and optimiser.
#[derive(Debug, Clone)]
pub struct Trainer {
    pub net: Network,
    pub params: Vec<f32>,
    pub grads: Vec<f32>,
    pub opt: Optimizer,
    pub loss: Loss,
    pub dropout: f32,
    ws: Work,
}

impl Trainer {
    pub fn new(net: Network, params: Vec<f32>, h: &Hyper) -> Trainer {
        let len = net.len;
        Trainer {
            net,
            params,
            grads: vec![0.0; len],
            opt: Optimizer::new(h.optimizer_kind(), h.learning_rate as f32, h.decay(), len),
            loss: h.loss_fn(),
            dropout: h.dropout as f32,
            ws: Work::default(),
        }
    }

    /// One optimiser step on a batch of `b` windows; its loss.
    pub fn step(&mut self, x: &[f32], b: usize, rng: &mut Rng) -> f32 {
        self.grads.fill(0.0);
        let loss = self.gradient(x, b, rng);
        self.opt.step(&mut self.params, &self.grads);
        loss
    }

    /// The loss of a batch and its gradient in `grads` (added).
    pub fn gradient(&mut self, x: &[f32], b: usize, rng: &mut Rng) -> f32 {
        let pass = self
            .net
            .forward(&self.params, x, b, &mut self.ws, Some((self.dropout, rng)));
        let loss = self.net.loss(x, b, &pass, self.loss, &mut self.ws, true);
        self.net
            .backward(&self.params, &mut self.grads, x, b, &mut self.ws);
        loss
    }

    /// The loss of a batch, without dropout or gradient.
    pub fn evaluate(&mut self, x: &[f32], b: usize) -> f32 {
        let pass = self.net.forward(&self.params, x, b, &mut self.ws, None);
        self.net.loss(x, b, &pass, self.loss, &mut self.ws, false)
    }

    /// Appends each window's anomaly score to `out`.
    pub fn scores(&mut self, x: &[f32], b: usize, out: &mut Vec<f32>) {
        score_with(&self.net, &self.params, x, b, &mut self.ws, out);
    }
}

/// Scores windows with given weights (a registered model's).
pub fn score_with(
    net: &Network,
    params: &[f32],
    x: &[f32],
    b: usize,
    ws: &mut Work,
    out: &mut Vec<f32>,
) {
    let pass = net.forward(params, x, b, ws, None);
    net.window_scores(x, b, &pass, ws, out);
}
