//! Every trained model as an ONNX graph of standard operators (opset 17),
//! so ONNX Runtime, or anything else that reads ONNX, scores what Warden
//! trained: `warden serve-model` serves it on a node.
//!
//! The graph takes raw sensor windows and does everything the native
//! scorer does after standardisation:
//!
//! - input `x`: float32 `[batch, sequence_length, features]`, the columns
//!   in the model's feature order (metadata `features`), complete rows
//!   (the native path carries missing values forward before scoring);
//! - output `score`: float32 `[batch]`, the window's anomaly score (the
//!   networks' mean squared reconstruction or prediction error over the
//!   standardised values, the sentinel's largest robust z-score);
//! - output `anomaly`: float32 `[batch]`, 1 where `score` exceeds the
//!   model's threshold (metadata `threshold`), else 0.
//!
//! Networks: `(x − mean) / sd`, `Transpose` to time-major, `LSTM`/`GRU`
//! nodes (PyTorch's gate orders i,f,g,o and r,z,n reordered to ONNX's
//! i,o,f,c and z,r,h; the two biases concatenated; the GRU with
//! `linear_before_reset`), for the autoencoder the last hidden state
//! `Tile`d over the steps into the decoder, `MatMul` + `Add` for the
//! output layer, `ReduceMean` of the squared error. The sentinel is
//! `Sub`/`Abs`/`Div`/`ReduceMax` over the values and their one-step
//! differences.
//!
//! [`Precision::Int8`] stores every weight matrix as int8 with one scale
//! per tensor (symmetric, zero point 0) behind a `DequantizeLinear`:
//! about a quarter of the size; biases stay float. [`dequantized`] is the
//! native model with the same rounding, what the int8 export computes.

use std::ops::Range;

use prost::Message;

use crate::layers::{Linear, Recurrent};
use crate::model::Model;
use crate::net::{Body, Cell, Stack};
use crate::sentinel::Sentinel;

pub const OPSET: i64 = 17;
/// IR version 8 goes with opset 17.
const IR_VERSION: i64 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    Int8,
}

// The ONNX messages Warden writes, field numbers from onnx.proto. The
// `oneof`s of TypeProto and Dimension are written as the optional fields
// they are on the wire.

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(int64, tag = "1")]
    ir_version: i64,
    #[prost(string, tag = "2")]
    producer_name: String,
    #[prost(string, tag = "3")]
    producer_version: String,
    #[prost(string, tag = "6")]
    doc_string: String,
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "8")]
    opset_import: Vec<OperatorSetIdProto>,
    #[prost(message, repeated, tag = "14")]
    metadata_props: Vec<StringStringEntryProto>,
}

#[derive(Clone, PartialEq, Message)]
struct OperatorSetIdProto {
    #[prost(string, tag = "1")]
    domain: String,
    #[prost(int64, tag = "2")]
    version: i64,
}

#[derive(Clone, PartialEq, Message)]
struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    name: String,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    input: Vec<ValueInfoProto>,
    #[prost(message, repeated, tag = "12")]
    output: Vec<ValueInfoProto>,
}

#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct AttributeProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(int64, tag = "3")]
    i: i64,
    #[prost(int64, repeated, tag = "8")]
    ints: Vec<i64>,
    #[prost(int32, tag = "20")]
    r#type: i32,
}

#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
struct ValueInfoProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "2")]
    r#type: Option<TypeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeProto {
    #[prost(message, optional, tag = "1")]
    tensor_type: Option<TensorType>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorType {
    #[prost(int32, tag = "1")]
    elem_type: i32,
    #[prost(message, optional, tag = "2")]
    shape: Option<TensorShapeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct TensorShapeProto {
    #[prost(message, repeated, tag = "1")]
    dim: Vec<Dimension>,
}

#[derive(Clone, PartialEq, Message)]
struct Dimension {
    #[prost(int64, optional, tag = "1")]
    dim_value: Option<i64>,
    #[prost(string, optional, tag = "2")]
    dim_param: Option<String>,
}

const FLOAT: i32 = 1;
const INT8: i32 = 3;
const INT64: i32 = 7;
const ATTR_INT: i32 = 2;
const ATTR_INTS: i32 = 7;

fn int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        i,
        r#type: ATTR_INT,
        ..Default::default()
    }
}

fn ints(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        ints: ints.to_vec(),
        r#type: ATTR_INTS,
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[Result<i64, &str>]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorType {
                elem_type: FLOAT,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| match d {
                            Ok(v) => Dimension {
                                dim_value: Some(*v),
                                dim_param: None,
                            },
                            Err(p) => Dimension {
                                dim_value: None,
                                dim_param: Some((*p).into()),
                            },
                        })
                        .collect(),
                }),
            }),
        }),
    }
}

/// One weight tensor as int8 and its scale: symmetric, per tensor.
pub fn quantize(w: &[f32]) -> (Vec<i8>, f32) {
    let max = w.iter().fold(0f32, |m, v| m.max(v.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    let q = w
        .iter()
        .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8)
        .collect();
    (q, scale)
}

/// Where the weight matrices lie in the flat parameter vector (what int8
/// quantises; biases stay float).
fn weight_ranges(body: &Body) -> Vec<Range<usize>> {
    fn recurrent(r: &Recurrent, out: &mut Vec<Range<usize>>) {
        let g = r.gates * r.hidden;
        out.push(r.w_ih..r.w_ih + g * r.input);
        out.push(r.w_hh..r.w_hh + g * r.hidden);
    }
    fn stack(s: &Stack, out: &mut Vec<Range<usize>>) {
        for c in &s.layers {
            match c {
                Cell::Lstm(l) => recurrent(l, out),
                Cell::Gru(g) => recurrent(g, out),
            }
        }
    }
    let linear = |l: &Linear| l.w..l.w + l.input * l.output;
    let mut out = Vec::new();
    match body {
        Body::Autoencoder {
            encoder,
            bottleneck,
            decoder,
            out: o,
        } => {
            stack(encoder, &mut out);
            out.extend(bottleneck.as_ref().map(linear));
            stack(decoder, &mut out);
            out.push(linear(o));
        }
        Body::Predictor { stack: s, out: o } => {
            stack(s, &mut out);
            out.push(linear(o));
        }
    }
    out
}

/// The model with every weight matrix rounded through int8 as the int8
/// export stores it: what that export computes, natively.
pub fn dequantized(model: &Model) -> Model {
    let mut m = model.clone();
    if let Some(net) = &model.network {
        for r in weight_ranges(&net.body) {
            let (q, scale) = quantize(&m.params[r.clone()]);
            for (p, q) in m.params[r].iter_mut().zip(q) {
                *p = q as f32 * scale;
            }
        }
    }
    m
}

/// Blocks of `rows`×`cols` (one gate each) put in `order`.
fn reorder<T: Copy>(m: &[T], rows: usize, cols: usize, order: &[usize]) -> Vec<T> {
    let block = rows * cols;
    order
        .iter()
        .flat_map(|&k| m[k * block..(k + 1) * block].iter().copied())
        .collect()
}

/// PyTorch's gate order to ONNX's: LSTM i,f,g,o → i,o,f,c; GRU r,z,n → z,r,h.
const LSTM_ORDER: [usize; 4] = [0, 3, 1, 2];
const GRU_ORDER: [usize; 3] = [1, 0, 2];

struct Builder<'a> {
    params: &'a [f32],
    precision: Precision,
    nodes: Vec<NodeProto>,
    inits: Vec<TensorProto>,
    next: usize,
}

impl Builder<'_> {
    fn name(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("{hint}_{}", self.next)
    }

    fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        self.op_n(op, inputs, attrs, 1).remove(0)
    }

    fn op_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        attribute: Vec<AttributeProto>,
        outputs: usize,
    ) -> Vec<String> {
        let name = self.name(op);
        let output: Vec<String> = (0..outputs).map(|k| format!("{name}:{k}")).collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: output.clone(),
            name,
            op_type: op.into(),
            attribute,
        });
        output
    }

    /// Gives a node's output its graph-output name.
    fn rename(&mut self, from: &str, to: &str) {
        for node in &mut self.nodes {
            for name in node.output.iter_mut().chain(node.input.iter_mut()) {
                if name == from {
                    *name = to.into();
                }
            }
        }
    }

    fn tensor(&mut self, hint: &str, dims: &[usize], data_type: i32, raw_data: Vec<u8>) -> String {
        let name = self.name(hint);
        self.inits.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type,
            name: name.clone(),
            raw_data,
        });
        name
    }

    fn floats(&mut self, hint: &str, dims: &[usize], data: &[f32]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(hint, dims, FLOAT, raw)
    }

    fn int64s(&mut self, hint: &str, data: &[i64]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensor(hint, &[data.len()], INT64, raw)
    }

    /// A weight matrix (already in ONNX's layout) shaped `dims`; int8
    /// behind a `DequantizeLinear` when asked. Rearranging a matrix does
    /// not change its largest magnitude, so the scale is the one
    /// [`dequantized`] finds on PyTorch's layout.
    fn weight(&mut self, hint: &str, data: &[f32], dims: &[usize]) -> String {
        match self.precision {
            Precision::F32 => self.floats(hint, dims, data),
            Precision::Int8 => {
                let (q, scale) = quantize(data);
                let q = self.tensor(hint, dims, INT8, q.iter().map(|v| *v as u8).collect());
                let s = self.floats("scale", &[], &[scale]);
                let z = self.tensor("zero_point", &[], INT8, vec![0]);
                self.op("DequantizeLinear", &[&q, &s, &z], vec![])
            }
        }
    }

    /// A recurrent layer over `x` (T×N×I): its output sequence (T×N×H)
    /// and last hidden state (1×N×H).
    fn recurrent(&mut self, cell: &Cell, x: &str) -> (String, String) {
        let (r, op, order): (&Recurrent, _, &[usize]) = match cell {
            Cell::Lstm(l) => (l, "LSTM", &LSTM_ORDER),
            Cell::Gru(g) => (g, "GRU", &GRU_ORDER),
        };
        let (h, i, g) = (r.hidden, r.input, r.gates);
        let w = reorder(&self.params[r.w_ih..r.w_ih + g * h * i], h, i, order);
        let w = self.weight("W", &w, &[1, g * h, i]);
        let rr = reorder(&self.params[r.w_hh..r.w_hh + g * h * h], h, h, order);
        let rr = self.weight("R", &rr, &[1, g * h, h]);
        let mut bias = reorder(&self.params[r.b_ih..r.b_ih + g * h], h, 1, order);
        bias.extend(reorder(&self.params[r.b_hh..r.b_hh + g * h], h, 1, order));
        let b = self.floats("B", &[1, 2 * g * h], &bias);
        let mut attrs = vec![int("hidden_size", h as i64)];
        if matches!(cell, Cell::Gru(_)) {
            attrs.push(int("linear_before_reset", 1));
        }
        let out = self.op_n(op, &[x, &w, &rr, &b], attrs, 2);
        let axes = self.int64s("axes", &[1]);
        let seq = self.op("Squeeze", &[&out[0], &axes], vec![]);
        (seq, out[1].clone())
    }

    fn stack(&mut self, s: &Stack, x: &str) -> (String, String) {
        let mut cur = (x.to_owned(), String::new());
        for cell in &s.layers {
            cur = self.recurrent(cell, &cur.0);
        }
        cur
    }

    /// `x @ Wᵀ + b` over the last axis.
    fn linear(&mut self, l: &Linear, x: &str) -> String {
        // PyTorch's O×I weight, transposed to I×O for MatMul.
        let (o, i) = (l.output, l.input);
        let w = &self.params[l.w..l.w + o * i];
        let wt: Vec<f32> = (0..i)
            .flat_map(|c| (0..o).map(move |r| w[r * i + c]))
            .collect();
        let w = self.weight("Wt", &wt, &[i, o]);
        let b = self.floats("b", &[o], &self.params[l.b..l.b + o]);
        let y = self.op("MatMul", &[x, &w], vec![]);
        self.op("Add", &[&y, &b], vec![])
    }

    /// Mean squared error over steps and features (axes 0 and 2 of
    /// T×N×F): the networks' score.
    fn mse(&mut self, y: &str, target: &str) -> String {
        let e = self.op("Sub", &[y, target], vec![]);
        let sq = self.op("Mul", &[&e, &e], vec![]);
        self.op(
            "ReduceMean",
            &[&sq],
            vec![ints("axes", &[0, 2]), int("keepdims", 0)],
        )
    }

    fn slice(&mut self, x: &str, axis: i64, from: i64, to: i64) -> String {
        let s = self.int64s("starts", &[from]);
        let e = self.int64s("ends", &[to]);
        let a = self.int64s("axes", &[axis]);
        self.op("Slice", &[x, &s, &e, &a], vec![])
    }

    /// max over the window of |v − median| / scale (N×T×F → N).
    fn robust_max(&mut self, v: &str, median: &[f32], scale: &[f32]) -> String {
        let f = median.len();
        let m = self.floats("median", &[f], median);
        let s = self.floats("mad", &[f], scale);
        let d = self.op("Sub", &[v, &m], vec![]);
        let a = self.op("Abs", &[&d], vec![]);
        let z = self.op("Div", &[&a, &s], vec![]);
        self.op(
            "ReduceMax",
            &[&z],
            vec![ints("axes", &[1, 2]), int("keepdims", 0)],
        )
    }

    fn sentinel(&mut self, s: &Sentinel, xs: &str, t: i64) -> String {
        let values = self.robust_max(xs, &s.median, &s.scale);
        let later = self.slice(xs, 1, 1, t);
        let earlier = self.slice(xs, 1, 0, t - 1);
        let diffs = self.op("Sub", &[&later, &earlier], vec![]);
        let steps = self.robust_max(&diffs, &s.diff_median, &s.diff_scale);
        self.op("Max", &[&values, &steps], vec![])
    }
}

/// The model as an ONNX file.
pub fn export(model: &Model, precision: Precision) -> Vec<u8> {
    let (t, f) = (model.sequence_length(), model.features.len());
    let mut g = Builder {
        params: &model.params,
        precision,
        nodes: Vec::new(),
        inits: Vec::new(),
        next: 0,
    };
    let mean = g.floats("mean", &[f], &model.mean);
    let sd = g.floats("sd", &[f], &model.sd);
    let centred = g.op("Sub", &["x", &mean], vec![]);
    let xs = g.op("Div", &[&centred, &sd], vec![]);
    let score = match (&model.sentinel, &model.network) {
        (Some(s), _) => g.sentinel(s, &xs, t as i64),
        (None, Some(net)) => {
            let xt = g.op("Transpose", &[&xs], vec![ints("perm", &[1, 0, 2])]);
            match &net.body {
                Body::Autoencoder {
                    encoder,
                    bottleneck,
                    decoder,
                    out,
                } => {
                    let (_, last) = g.stack(encoder, &xt);
                    let axis0 = g.int64s("axes", &[0]);
                    let z = g.op("Squeeze", &[&last, &axis0], vec![]);
                    let code = match bottleneck {
                        Some(b) => g.linear(b, &z),
                        None => z,
                    };
                    let one = g.op("Unsqueeze", &[&code, &axis0], vec![]);
                    let repeats = g.int64s("repeats", &[t as i64, 1, 1]);
                    let dec_in = g.op("Tile", &[&one, &repeats], vec![]);
                    let (seq, _) = g.stack(decoder, &dec_in);
                    let y = g.linear(out, &seq);
                    g.mse(&y, &xt)
                }
                Body::Predictor { stack, out } => {
                    let inputs = g.slice(&xt, 0, 0, t as i64 - 1);
                    let target = g.slice(&xt, 0, 1, t as i64);
                    let (seq, _) = g.stack(stack, &inputs);
                    let y = g.linear(out, &seq);
                    g.mse(&y, &target)
                }
            }
        }
        (None, None) => unreachable!("a model has a network or is a sentinel"),
    };
    g.rename(&score, "score");
    let threshold = g.floats("threshold", &[], &[model.threshold]);
    let beyond = g.op("Greater", &["score", &threshold], vec![]);
    let anomaly = g.op("Cast", &[&beyond], vec![int("to", FLOAT as i64)]);
    g.rename(&anomaly, "anomaly");
    let meta = |k: &str, v: String| StringStringEntryProto {
        key: k.into(),
        value: v,
    };
    let proto = ModelProto {
        ir_version: IR_VERSION,
        producer_name: "warden".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: "Anomaly scores of sensor windows: input x [batch, steps, features] (raw values), outputs score and anomaly [batch]".into(),
        graph: Some(GraphProto {
            node: g.nodes,
            name: model.architecture.as_str().into(),
            initializer: g.inits,
            input: vec![value_info("x", &[Err("batch"), Ok(t as i64), Ok(f as i64)])],
            output: vec![
                value_info("score", &[Err("batch")]),
                value_info("anomaly", &[Err("batch")]),
            ],
        }),
        opset_import: vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        metadata_props: vec![
            meta("architecture", model.architecture.as_str().into()),
            meta("threshold", model.threshold.to_string()),
            meta("sequence_length", t.to_string()),
            meta(
                "features",
                serde_json::to_string(&model.features).expect("names serialise"),
            ),
            meta(
                "precision",
                match precision {
                    Precision::F32 => "float32",
                    Precision::Int8 => "int8",
                }
                .into(),
            ),
        ],
    };
    proto.encode_to_vec()
}
