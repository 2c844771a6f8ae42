//! Weights as the `models` table stores them: named f32 tensors, grouped into layers, each
//! layer one safetensors blob (so Python reads a row with `safetensors.numpy.load(bytes)`).
//! Also the BERT loader: named tensors → burn modules, every shape checked.
use std::collections::{BTreeMap, HashMap};

use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use super::bert::{BertConfig, BertEmbeddings, BertLayer, BertModel};

/// One named tensor, row-major f32.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl NamedTensor {
    pub fn bytes(&self) -> u64 {
        (self.data.len() * 4) as u64
    }
}

/// Reads the floating-point tensors of a safetensors buffer as f32 (F16/BF16/F64 widened or
/// narrowed). Integer buffers (BERT's `position_ids`) are not weights and are skipped.
pub fn read_safetensors(bytes: &[u8]) -> Result<Vec<NamedTensor>, String> {
    let file = SafeTensors::deserialize(bytes).map_err(|e| format!("not a safetensors buffer: {e}"))?;
    let mut out = Vec::new();
    for (name, view) in file.tensors() {
        let raw = view.data();
        let data: Vec<f32> = match view.dtype() {
            Dtype::F32 => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => raw.chunks_exact(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::F64 => raw.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32).collect(),
            _ => continue,
        };
        if let Some(bad) = data.iter().position(|v| !v.is_finite()) {
            return Err(format!("tensor '{name}' has a non-finite value at element {bad}"));
        }
        out.push(NamedTensor { name, shape: view.shape().to_vec(), data });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// One layer's tensors as a safetensors (F32) buffer.
pub fn write_safetensors(tensors: &[NamedTensor]) -> Result<Vec<u8>, String> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|t| (t.name.clone(), t.data.iter().flat_map(|v| v.to_le_bytes()).collect(), t.shape.clone()))
        .collect();
    let views = bytes
        .iter()
        .map(|(name, data, shape)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data).map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    safetensors::tensor::serialize(views, None).map_err(|e| e.to_string())
}

/// A layer of the `models` table: its `layer_id`, a name, and its tensors.
#[derive(Clone, Debug)]
pub struct Layer {
    pub id: i32,
    pub name: String,
    pub tensors: Vec<NamedTensor>,
}

/// Splits a BERT checkpoint into rows: 0 = `embeddings`, 1..=L = `encoder.layer.{i}`,
/// L+1 = `head` (pooler and anything task-specific). A `bert.` prefix (as in
/// `BertForMaskedLM` checkpoints) is dropped so names are those of `BertModel`.
pub fn bert_layers(config: &BertConfig, tensors: Vec<NamedTensor>) -> Vec<Layer> {
    let n = config.num_hidden_layers;
    let mut layers: Vec<Layer> = (0..=n + 1)
        .map(|i| Layer {
            id: i as i32,
            name: match i {
                0 => "embeddings".to_string(),
                i if i <= n => format!("encoder.layer.{}", i - 1),
                _ => "head".to_string(),
            },
            tensors: Vec::new(),
        })
        .collect();
    for mut t in tensors {
        if let Some(rest) = t.name.strip_prefix("bert.") {
            t.name = rest.to_string();
        }
        let slot = if t.name.starts_with("embeddings.") {
            0
        } else if let Some(i) = t
            .name
            .strip_prefix("encoder.layer.")
            .and_then(|rest| rest.split('.').next())
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|&i| i < n)
        {
            i + 1
        } else {
            n + 1
        };
        layers[slot].tensors.push(t);
    }
    layers.retain(|l| !l.tensors.is_empty());
    layers
}

/// The tensors `BertModel` needs, with their shapes, by the names a layer stores them under.
pub fn bert_expected_shapes(config: &BertConfig, layer_id: i32) -> BTreeMap<String, Vec<usize>> {
    let (h, ff) = (config.hidden_size, config.intermediate_size);
    let mut want = BTreeMap::new();
    let mut put = |name: String, shape: Vec<usize>| {
        want.insert(name, shape);
    };
    if layer_id == 0 {
        put("embeddings.word_embeddings.weight".into(), vec![config.vocab_size, h]);
        put("embeddings.position_embeddings.weight".into(), vec![config.max_position_embeddings, h]);
        put("embeddings.token_type_embeddings.weight".into(), vec![config.type_vocab_size, h]);
        put("embeddings.LayerNorm.weight".into(), vec![h]);
        put("embeddings.LayerNorm.bias".into(), vec![h]);
    } else if (1..=config.num_hidden_layers as i32).contains(&layer_id) {
        let p = format!("encoder.layer.{}.", layer_id - 1);
        for (name, out, inp) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", ff, h),
            ("output.dense", h, ff),
        ] {
            put(format!("{p}{name}.weight"), vec![out, inp]);
            put(format!("{p}{name}.bias"), vec![out]);
        }
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            put(format!("{p}{norm}.weight"), vec![h]);
            put(format!("{p}{norm}.bias"), vec![h]);
        }
    }
    want
}

/// Checks that a layer carries every tensor the architecture needs, with the right shape.
pub fn check_bert_layer(config: &BertConfig, layer_id: i32, tensors: &[NamedTensor]) -> Result<(), String> {
    let have: HashMap<&str, &NamedTensor> = tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    for (name, shape) in bert_expected_shapes(config, layer_id) {
        match have.get(name.as_str()) {
            None => return Err(format!("layer {layer_id} lacks tensor '{name}' (shape {shape:?})")),
            Some(t) if t.shape != shape => {
                return Err(format!("layer {layer_id}: tensor '{name}' has shape {:?}, the architecture needs {shape:?}", t.shape))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn tensor<B: Backend, const D: usize>(t: &NamedTensor, device: &B::Device) -> Tensor<B, D> {
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
}

/// PyTorch stores a Linear's weight as [out, in]; burn's `Linear` holds [in, out].
fn linear<B: Backend>(weight: &NamedTensor, bias: &NamedTensor, device: &B::Device) -> Linear<B> {
    let (out, inp) = (weight.shape[0], weight.shape[1]);
    let mut transposed = vec![0.0f32; out * inp];
    for o in 0..out {
        for i in 0..inp {
            transposed[i * out + o] = weight.data[o * inp + i];
        }
    }
    let w = Tensor::from_data(TensorData::new(transposed, [inp, out]), device);
    Linear { weight: Param::from_tensor(w), bias: Some(Param::from_tensor(tensor(bias, device))) }
}

fn layer_norm<B: Backend>(config: &BertConfig, weight: &NamedTensor, bias: &NamedTensor, device: &B::Device) -> LayerNorm<B> {
    let mut norm = LayerNormConfig::new(config.hidden_size).with_epsilon(config.layer_norm_eps).init(device);
    norm.gamma = Param::from_tensor(tensor(weight, device));
    norm.beta = Some(Param::from_tensor(tensor(bias, device)));
    norm
}

fn embedding<B: Backend>(weight: &NamedTensor, device: &B::Device) -> Embedding<B> {
    Embedding { weight: Param::from_tensor(tensor(weight, device)) }
}

/// Builds the encoder from the stored layers (`layers[i]` = the tensors of `layer_id` i).
pub fn load_bert<B: Backend>(config: &BertConfig, layers: &BTreeMap<i32, Vec<NamedTensor>>, device: &B::Device) -> Result<BertModel<B>, String> {
    for id in 0..=config.num_hidden_layers as i32 {
        let tensors = layers.get(&id).ok_or_else(|| format!("layer {id} is missing"))?;
        check_bert_layer(config, id, tensors)?;
    }
    let find = |id: i32, name: &str| -> &NamedTensor {
        layers[&id].iter().find(|t| t.name == name).expect("checked by check_bert_layer")
    };
    let embeddings = BertEmbeddings {
        word: embedding(find(0, "embeddings.word_embeddings.weight"), device),
        position: embedding(find(0, "embeddings.position_embeddings.weight"), device),
        token_type: embedding(find(0, "embeddings.token_type_embeddings.weight"), device),
        norm: layer_norm(config, find(0, "embeddings.LayerNorm.weight"), find(0, "embeddings.LayerNorm.bias"), device),
    };
    let layers = (0..config.num_hidden_layers)
        .map(|i| {
            let id = i as i32 + 1;
            let p = format!("encoder.layer.{i}.");
            let lin = |name: &str| linear(find(id, &format!("{p}{name}.weight")), find(id, &format!("{p}{name}.bias")), device);
            let norm = |name: &str| {
                layer_norm(config, find(id, &format!("{p}{name}.weight")), find(id, &format!("{p}{name}.bias")), device)
            };
            BertLayer {
                query: lin("attention.self.query"),
                key: lin("attention.self.key"),
                value: lin("attention.self.value"),
                attention_output: lin("attention.output.dense"),
                attention_norm: norm("attention.output.LayerNorm"),
                intermediate: lin("intermediate.dense"),
                output: lin("output.dense"),
                output_norm: norm("output.LayerNorm"),
            }
        })
        .collect();
    Ok(BertModel { embeddings, layers, heads: config.num_attention_heads })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_round_trip() {
        let t = vec![
            NamedTensor { name: "a.weight".into(), shape: vec![2, 3], data: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0] },
            NamedTensor { name: "a.bias".into(), shape: vec![2], data: vec![-1.0, 0.5] },
        ];
        let bytes = write_safetensors(&t).unwrap();
        let mut back = read_safetensors(&bytes).unwrap();
        back.sort_by(|a, b| b.name.cmp(&a.name));
        assert_eq!(back, t);
        assert!(read_safetensors(b"not safetensors").is_err());
    }
}
