//! The layers, over one flat parameter vector (and a gradient vector of
//! the same shape): a layer knows where its weights lie, its tape keeps
//! what the backward pass needs. Shapes and gate orders are PyTorch's
//! (`weight_ih` 4H×I with gates i, f, g, o for the LSTM; 3H×I with r, z, n
//! for the GRU), so weights map one-to-one onto ONNX and PyTorch.
//!
//! Sequences are time-major: step `s` of a batch of `b` is the block
//! `[s·b·w, (s+1)·b·w)` of a buffer of width `w`. Per step the recurrent
//! part is one matrix product over the whole batch with the gates fused
//! (B×H times H×4H); the input part is one product over every step at
//! once, and so are the weight gradients.

use crate::linalg::{add_col_sums, add_rows, gemm, sigmoid, tanh};
use crate::rng::Rng;

/// Hands out ranges of the flat parameter vector and remembers how each
/// is initialised (uniform in ±bound, PyTorch's defaults).
#[derive(Debug, Default)]
pub struct Layout {
    pub len: usize,
    inits: Vec<(usize, usize, f32)>,
}

impl Layout {
    fn take(&mut self, n: usize, bound: f32) -> usize {
        let at = self.len;
        self.inits.push((at, n, bound));
        self.len += n;
        at
    }

    /// Fresh parameters.
    pub fn init(&self, rng: &mut Rng) -> Vec<f32> {
        let mut p = vec![0.0; self.len];
        for &(at, n, bound) in &self.inits {
            for v in &mut p[at..at + n] {
                *v = rng.symmetric(bound);
            }
        }
        p
    }
}

/// A layer's input: a sequence (T·B×I), or one row per batch item
/// repeated at every step (B×I: the autoencoder's decoder).
#[derive(Clone, Copy)]
pub enum Input<'a> {
    Seq(&'a [f32]),
    Repeat(&'a [f32]),
}

/// Recurrent state kept for the backward pass.
#[derive(Debug, Default, Clone)]
pub struct Tape {
    /// Activated gates, T·B×G·H.
    pub gates: Vec<f32>,
    /// Hidden states, (T+1)·B×H; block 0 is the zero initial state.
    pub h: Vec<f32>,
    /// LSTM: cell states, (T+1)·B×H. GRU: the recurrent part of the
    /// candidate (W_hn·h + b_hn), T·B×H.
    pub c: Vec<f32>,
    /// LSTM: tanh of the cell states, T·B×H.
    pub tc: Vec<f32>,
}

impl Tape {
    /// The hidden states of steps 1..=T (the layer's output sequence).
    pub fn output(&self, b: usize, hidden: usize) -> &[f32] {
        &self.h[b * hidden..]
    }
}

fn resize(v: &mut Vec<f32>, n: usize) {
    v.clear();
    v.resize(n, 0.0);
}

/// Gradient buffers the backward passes reuse.
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    da: Vec<f32>,
    dah: Vec<f32>,
    dsum: Vec<f32>,
    dh_next: Vec<f32>,
    dc_next: Vec<f32>,
    bias: Vec<f32>,
}

/// Where a recurrent layer's weights lie: `weight_ih` G·H×I, `weight_hh`
/// G·H×H and the two biases G·H, for G gates (LSTM 4, GRU 3).
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Recurrent {
    pub input: usize,
    pub hidden: usize,
    pub gates: usize,
    pub w_ih: usize,
    pub w_hh: usize,
    pub b_ih: usize,
    pub b_hh: usize,
}

impl Recurrent {
    fn new(layout: &mut Layout, input: usize, hidden: usize, gates: usize) -> Recurrent {
        let bound = 1.0 / (hidden as f32).sqrt();
        let g = gates * hidden;
        Recurrent {
            input,
            hidden,
            gates,
            w_ih: layout.take(g * input, bound),
            w_hh: layout.take(g * hidden, bound),
            b_ih: layout.take(g, bound),
            b_hh: layout.take(g, bound),
        }
    }

    /// `weight_ih`, `weight_hh`, `bias_ih`, `bias_hh`.
    fn weights<'a>(&self, p: &'a [f32]) -> (&'a [f32], &'a [f32], &'a [f32], &'a [f32]) {
        let g = self.gates * self.hidden;
        (
            &p[self.w_ih..self.w_ih + g * self.input],
            &p[self.w_hh..self.w_hh + g * self.hidden],
            &p[self.b_ih..self.b_ih + g],
            &p[self.b_hh..self.b_hh + g],
        )
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Lstm(pub Recurrent);

impl std::ops::Deref for Lstm {
    type Target = Recurrent;
    fn deref(&self) -> &Recurrent {
        &self.0
    }
}

impl Lstm {
    pub fn new(layout: &mut Layout, input: usize, hidden: usize) -> Lstm {
        Lstm(Recurrent::new(layout, input, hidden, 4))
    }

    pub fn forward(
        &self,
        p: &[f32],
        x: Input,
        t: usize,
        b: usize,
        tape: &mut Tape,
        sc: &mut Scratch,
    ) {
        let (h, i) = (self.hidden, self.input);
        let g4 = 4 * h;
        let (w_ih, w_hh, b_ih, b_hh) = self.weights(p);
        sc.bias.clear();
        sc.bias.extend(b_ih.iter().zip(b_hh).map(|(x, y)| x + y));
        resize(&mut tape.gates, t * b * g4);
        resize(&mut tape.h, (t + 1) * b * h);
        resize(&mut tape.c, (t + 1) * b * h);
        resize(&mut tape.tc, t * b * h);
        match x {
            Input::Seq(x) => {
                add_rows(&mut tape.gates, &sc.bias);
                gemm(t * b, i, g4, x, false, w_ih, true, 1.0, &mut tape.gates);
            }
            Input::Repeat(x) => {
                let (first, rest) = tape.gates.split_at_mut(b * g4);
                add_rows(first, &sc.bias);
                gemm(b, i, g4, x, false, w_ih, true, 1.0, first);
                for block in rest.chunks_exact_mut(b * g4) {
                    block.copy_from_slice(first);
                }
            }
        }
        for s in 0..t {
            let gates = &mut tape.gates[s * b * g4..(s + 1) * b * g4];
            let (hs, hn) = tape.h.split_at_mut((s + 1) * b * h);
            let h_prev = &hs[s * b * h..];
            gemm(b, h, g4, h_prev, false, w_hh, true, 1.0, gates);
            let (cs, cn) = tape.c.split_at_mut((s + 1) * b * h);
            let c_prev = &cs[s * b * h..];
            let tc = &mut tape.tc[s * b * h..(s + 1) * b * h];
            lstm_cells(
                h,
                gates,
                &c_prev[..b * h],
                &mut cn[..b * h],
                tc,
                &mut hn[..b * h],
            );
        }
    }

    /// Backpropagates `dh` (T·B×H, the loss's gradient on each output
    /// step; overwritten) into the gradient vector `g`, and into `dx`
    /// (shaped like the input) when asked.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        p: &[f32],
        g: &mut [f32],
        x: Input,
        t: usize,
        b: usize,
        tape: &Tape,
        dh: &[f32],
        dx: Option<&mut [f32]>,
        sc: &mut Scratch,
    ) {
        let (h, i) = (self.hidden, self.input);
        let g4 = 4 * h;
        let (w_ih, w_hh, _, _) = self.weights(p);
        resize(&mut sc.da, t * b * g4);
        resize(&mut sc.dh_next, b * h);
        resize(&mut sc.dc_next, b * h);
        for s in (0..t).rev() {
            let gates = &tape.gates[s * b * g4..(s + 1) * b * g4];
            let da = &mut sc.da[s * b * g4..(s + 1) * b * g4];
            let c_prev = &tape.c[s * b * h..(s + 1) * b * h];
            let tc = &tape.tc[s * b * h..(s + 1) * b * h];
            let dh_out = &dh[s * b * h..(s + 1) * b * h];
            for r in 0..b {
                let row = &gates[r * g4..(r + 1) * g4];
                let (gi, rest) = row.split_at(h);
                let (gf, rest) = rest.split_at(h);
                let (gg, go) = rest.split_at(h);
                let drow = &mut da[r * g4..(r + 1) * g4];
                let (di, rest) = drow.split_at_mut(h);
                let (df, rest) = rest.split_at_mut(h);
                let (dg, dout) = rest.split_at_mut(h);
                let span = r * h..(r + 1) * h;
                let (cp, tcr, dho) = (
                    &c_prev[span.clone()],
                    &tc[span.clone()],
                    &dh_out[span.clone()],
                );
                let dhn = &sc.dh_next[span.clone()];
                let dcn = &mut sc.dc_next[span];
                for j in 0..h {
                    let d = dho[j] + dhn[j];
                    let (ig, fg, gv, og, th) = (gi[j], gf[j], gg[j], go[j], tcr[j]);
                    let dc = dcn[j] + d * og * (1.0 - th * th);
                    dout[j] = d * th * og * (1.0 - og);
                    di[j] = dc * gv * ig * (1.0 - ig);
                    df[j] = dc * cp[j] * fg * (1.0 - fg);
                    dg[j] = dc * ig * (1.0 - gv * gv);
                    dcn[j] = dc * fg;
                }
            }
            gemm(b, g4, h, da, false, w_hh, false, 0.0, &mut sc.dh_next);
        }
        let (gw_ih, rest) = g[self.w_ih..].split_at_mut(4 * h * i);
        let gw_hh = &mut rest[..4 * h * h];
        gemm(g4, t * b, h, &sc.da, true, &tape.h, false, 1.0, gw_hh);
        match x {
            Input::Seq(x) => {
                gemm(g4, t * b, i, &sc.da, true, x, false, 1.0, gw_ih);
                if let Some(dx) = dx {
                    gemm(t * b, g4, i, &sc.da, false, w_ih, false, 0.0, dx);
                }
            }
            Input::Repeat(x) => {
                resize(&mut sc.dsum, b * g4);
                for block in sc.da.chunks_exact(b * g4) {
                    for (s, d) in sc.dsum.iter_mut().zip(block) {
                        *s += d;
                    }
                }
                gemm(g4, b, i, &sc.dsum, true, x, false, 1.0, gw_ih);
                if let Some(dx) = dx {
                    gemm(b, g4, i, &sc.dsum, false, w_ih, false, 0.0, dx);
                }
            }
        }
        add_col_sums(&sc.da, &mut g[self.b_ih..self.b_ih + g4]);
        add_col_sums(&sc.da, &mut g[self.b_hh..self.b_hh + g4]);
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Gru(pub Recurrent);

impl std::ops::Deref for Gru {
    type Target = Recurrent;
    fn deref(&self) -> &Recurrent {
        &self.0
    }
}

impl Gru {
    pub fn new(layout: &mut Layout, input: usize, hidden: usize) -> Gru {
        Gru(Recurrent::new(layout, input, hidden, 3))
    }

    /// PyTorch's GRU: r = σ(x·W_irᵀ + b_ir + h·W_hrᵀ + b_hr), z likewise,
    /// n = tanh(x·W_inᵀ + b_in + r ⊙ (h·W_hnᵀ + b_hn)), h' = (1−z) ⊙ n + z ⊙ h.
    pub fn forward(
        &self,
        p: &[f32],
        x: &[f32],
        t: usize,
        b: usize,
        tape: &mut Tape,
        sc: &mut Scratch,
    ) {
        let (h, i) = (self.hidden, self.input);
        let g3 = 3 * h;
        let (w_ih, w_hh, b_ih, b_hh) = self.weights(p);
        resize(&mut tape.gates, t * b * g3);
        resize(&mut tape.h, (t + 1) * b * h);
        resize(&mut tape.c, t * b * h);
        add_rows(&mut tape.gates, b_ih);
        gemm(t * b, i, g3, x, false, w_ih, true, 1.0, &mut tape.gates);
        resize(&mut sc.bias, b * g3);
        for s in 0..t {
            let gh = &mut sc.bias;
            gh.fill(0.0);
            add_rows(gh, b_hh);
            let (hs, hn) = tape.h.split_at_mut((s + 1) * b * h);
            let h_prev = &hs[s * b * h..];
            gemm(b, h, g3, h_prev, false, w_hh, true, 1.0, gh);
            let gates = &mut tape.gates[s * b * g3..(s + 1) * b * g3];
            let ghn_out = &mut tape.c[s * b * h..(s + 1) * b * h];
            for r in 0..b {
                let row = &mut gates[r * g3..(r + 1) * g3];
                let (gr, rest) = row.split_at_mut(h);
                let (gz, gn) = rest.split_at_mut(h);
                let hrow = &gh[r * g3..(r + 1) * g3];
                let (hr, rest) = hrow.split_at(h);
                let (hz, hnn) = rest.split_at(h);
                let span = r * h..(r + 1) * h;
                let (hp, hnew, ghn) = (
                    &h_prev[span.clone()],
                    &mut hn[span.clone()],
                    &mut ghn_out[span],
                );
                for j in 0..h {
                    let rg = sigmoid(gr[j] + hr[j]);
                    let zg = sigmoid(gz[j] + hz[j]);
                    let ng = tanh(gn[j] + rg * hnn[j]);
                    gr[j] = rg;
                    gz[j] = zg;
                    gn[j] = ng;
                    ghn[j] = hnn[j];
                    hnew[j] = (1.0 - zg) * ng + zg * hp[j];
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &self,
        p: &[f32],
        g: &mut [f32],
        x: &[f32],
        t: usize,
        b: usize,
        tape: &Tape,
        dh: &[f32],
        dx: Option<&mut [f32]>,
        sc: &mut Scratch,
    ) {
        let (h, i) = (self.hidden, self.input);
        let g3 = 3 * h;
        let (w_ih, w_hh, _, _) = self.weights(p);
        resize(&mut sc.da, t * b * g3);
        resize(&mut sc.dah, t * b * g3);
        resize(&mut sc.dh_next, b * h);
        for s in (0..t).rev() {
            let gates = &tape.gates[s * b * g3..(s + 1) * b * g3];
            let ghn = &tape.c[s * b * h..(s + 1) * b * h];
            let h_prev = &tape.h[s * b * h..(s + 1) * b * h];
            let dh_out = &dh[s * b * h..(s + 1) * b * h];
            let dax = &mut sc.da[s * b * g3..(s + 1) * b * g3];
            let dah = &mut sc.dah[s * b * g3..(s + 1) * b * g3];
            for r in 0..b {
                let row = &gates[r * g3..(r + 1) * g3];
                let (gr, rest) = row.split_at(h);
                let (gz, gn) = rest.split_at(h);
                let xrow = &mut dax[r * g3..(r + 1) * g3];
                let (xr, rest) = xrow.split_at_mut(h);
                let (xz, xn) = rest.split_at_mut(h);
                let hrow = &mut dah[r * g3..(r + 1) * g3];
                let (hr, rest) = hrow.split_at_mut(h);
                let (hz, hn) = rest.split_at_mut(h);
                let span = r * h..(r + 1) * h;
                let (ghr, hp, dho) = (
                    &ghn[span.clone()],
                    &h_prev[span.clone()],
                    &dh_out[span.clone()],
                );
                let dhn = &mut sc.dh_next[span];
                for j in 0..h {
                    let d = dho[j] + dhn[j];
                    let (rg, zg, ng) = (gr[j], gz[j], gn[j]);
                    let dan = d * (1.0 - zg) * (1.0 - ng * ng);
                    let daz = d * (hp[j] - ng) * zg * (1.0 - zg);
                    let dar = dan * ghr[j] * rg * (1.0 - rg);
                    xr[j] = dar;
                    xz[j] = daz;
                    xn[j] = dan;
                    hr[j] = dar;
                    hz[j] = daz;
                    hn[j] = dan * rg;
                    dhn[j] = d * zg;
                }
            }
            gemm(b, g3, h, dah, false, w_hh, false, 1.0, &mut sc.dh_next);
        }
        let (gw_ih, rest) = g[self.w_ih..].split_at_mut(3 * h * i);
        let gw_hh = &mut rest[..3 * h * h];
        gemm(g3, t * b, h, &sc.dah, true, &tape.h, false, 1.0, gw_hh);
        gemm(g3, t * b, i, &sc.da, true, x, false, 1.0, gw_ih);
        if let Some(dx) = dx {
            gemm(t * b, g3, i, &sc.da, false, w_ih, false, 0.0, dx);
        }
        add_col_sums(&sc.da, &mut g[self.b_ih..self.b_ih + g3]);
        add_col_sums(&sc.dah, &mut g[self.b_hh..self.b_hh + g3]);
    }
}

/// y = x·Wᵀ + b, W out×in.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Linear {
    pub input: usize,
    pub output: usize,
    pub w: usize,
    pub b: usize,
}

impl Linear {
    pub fn new(layout: &mut Layout, input: usize, output: usize) -> Linear {
        let bound = 1.0 / (input as f32).sqrt();
        Linear {
            input,
            output,
            w: layout.take(output * input, bound),
            b: layout.take(output, bound),
        }
    }

    pub fn forward(&self, p: &[f32], x: &[f32], n: usize, y: &mut Vec<f32>) {
        resize(y, n * self.output);
        add_rows(y, &p[self.b..self.b + self.output]);
        gemm(
            n,
            self.input,
            self.output,
            x,
            false,
            &p[self.w..],
            true,
            1.0,
            y,
        );
    }

    pub fn backward(
        &self,
        p: &[f32],
        g: &mut [f32],
        x: &[f32],
        n: usize,
        dy: &[f32],
        dx: Option<&mut Vec<f32>>,
    ) {
        let (i, o) = (self.input, self.output);
        gemm(
            o,
            n,
            i,
            dy,
            true,
            x,
            false,
            1.0,
            &mut g[self.w..self.w + o * i],
        );
        add_col_sums(&dy[..n * o], &mut g[self.b..self.b + o]);
        if let Some(dx) = dx {
            resize(dx, n * i);
            gemm(n, o, i, dy, false, &p[self.w..], false, 0.0, dx);
        }
    }
}

/// One LSTM step's element-wise part for a batch: activates the gates
/// (B×4H, in place) and computes the new cell and hidden states. On x86
/// CPUs with AVX2 and FMA the same code is compiled for them (8 lanes
/// and fused multiply-adds instead of SSE2's 4), chosen at run time.
fn lstm_cells(
    h: usize,
    gates: &mut [f32],
    c_prev: &[f32],
    cn: &mut [f32],
    tc: &mut [f32],
    hn: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has both features the function is compiled for.
        unsafe { lstm_cells_avx2(h, gates, c_prev, cn, tc, hn) };
        return;
    }
    lstm_cells_body(h, gates, c_prev, cn, tc, hn);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn lstm_cells_avx2(
    h: usize,
    gates: &mut [f32],
    c_prev: &[f32],
    cn: &mut [f32],
    tc: &mut [f32],
    hn: &mut [f32],
) {
    lstm_cells_body(h, gates, c_prev, cn, tc, hn);
}

#[inline(always)]
fn lstm_cells_body(
    h: usize,
    gates: &mut [f32],
    c_prev: &[f32],
    cn: &mut [f32],
    tc: &mut [f32],
    hn: &mut [f32],
) {
    let rows = gates.chunks_exact_mut(4 * h).zip(
        c_prev
            .chunks_exact(h)
            .zip(cn.chunks_exact_mut(h))
            .zip(tc.chunks_exact_mut(h).zip(hn.chunks_exact_mut(h))),
    );
    for (row, ((cp, cn), (tc, hn))) in rows {
        let (sig, rest) = row.split_at_mut(2 * h);
        let (gg, go) = rest.split_at_mut(h);
        // Plain passes over contiguous slices: LLVM vectorises them.
        sig.iter_mut().for_each(|v| *v = sigmoid(*v));
        gg.iter_mut().for_each(|v| *v = tanh(*v));
        go.iter_mut().for_each(|v| *v = sigmoid(*v));
        let (gi, gf) = sig.split_at(h);
        for (((ig, fg), (g, og)), ((cp, cn), (tc, hn))) in
            gi.iter().zip(gf).zip(gg.iter().zip(go.iter())).zip(
                cp.iter()
                    .zip(cn.iter_mut())
                    .zip(tc.iter_mut().zip(hn.iter_mut())),
            )
        {
            let c = fg * cp + ig * g;
            let th = tanh(c);
            *cn = c;
            *tc = th;
            *hn = og * th;
        }
    }
}
