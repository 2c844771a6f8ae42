//! BERT-family text encoder (BERT, MiniLM, all-MiniLM-L6-v2 …): configuration, modules and
//! forward pass, written once over burn's `Backend` so a GPU backend only swaps the type.
//! Weights come from [`super::weights`]; nothing here reads files.
use burn::module::Module;
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

/// The fields of a Hugging Face `config.json` that the forward pass uses.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

impl BertConfig {
    /// Reads and checks a `config.json` value.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, String> {
        let config: BertConfig = serde_json::from_value(value.clone()).map_err(|e| format!("config.json: {e}"))?;
        if config.num_attention_heads == 0 || config.hidden_size % config.num_attention_heads != 0 {
            return Err(format!(
                "config.json: hidden_size {} is not a multiple of num_attention_heads {}",
                config.hidden_size, config.num_attention_heads
            ));
        }
        // "gelu" in transformers is the exact erf form, which burn's `gelu` computes.
        if config.hidden_act != "gelu" {
            return Err(format!("config.json: hidden_act '{}' is not supported (only 'gelu')", config.hidden_act));
        }
        Ok(config)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

#[derive(Module, Debug)]
pub struct BertEmbeddings<B: Backend> {
    pub word: Embedding<B>,
    pub position: Embedding<B>,
    pub token_type: Embedding<B>,
    pub norm: LayerNorm<B>,
}

/// One transformer block: self-attention, then the feed-forward, each with a residual and a
/// post-LayerNorm (BERT's order).
#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    pub query: Linear<B>,
    pub key: Linear<B>,
    pub value: Linear<B>,
    pub attention_output: Linear<B>,
    pub attention_norm: LayerNorm<B>,
    pub intermediate: Linear<B>,
    pub output: Linear<B>,
    pub output_norm: LayerNorm<B>,
}

#[derive(Module, Debug)]
pub struct BertModel<B: Backend> {
    pub embeddings: BertEmbeddings<B>,
    pub layers: Vec<BertLayer<B>>,
    pub heads: usize,
}

impl<B: Backend> BertLayer<B> {
    /// `x`: [batch, seq, hidden]; `bias`: [batch, 1, 1, seq] (0 for tokens, a large negative
    /// number for padding, so padded keys get no attention).
    fn forward(&self, x: Tensor<B, 3>, bias: Tensor<B, 4>, heads: usize) -> Tensor<B, 3> {
        let [batch, seq, hidden] = x.dims();
        let head_dim = hidden / heads;
        let split = |t: Tensor<B, 3>| t.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2);
        let q = split(self.query.forward(x.clone()));
        let k = split(self.key.forward(x.clone()));
        let v = split(self.value.forward(x.clone()));
        let scores = q.matmul(k.swap_dims(2, 3)).div_scalar((head_dim as f32).sqrt()) + bias;
        let context = softmax(scores, 3).matmul(v).swap_dims(1, 2).reshape([batch, seq, hidden]);
        let x = self.attention_norm.forward(self.attention_output.forward(context) + x);
        let inner = gelu(self.intermediate.forward(x.clone()));
        self.output_norm.forward(self.output.forward(inner) + x)
    }
}

impl<B: Backend> BertModel<B> {
    /// Last hidden states [batch, seq, hidden] for token ids [batch, seq] and an attention
    /// mask [batch, seq] (1 for tokens, 0 for padding). Token types are all 0 (one segment).
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>, mask: Tensor<B, 2>) -> Tensor<B, 3> {
        let [batch, seq] = input_ids.dims();
        let device = input_ids.device();
        let positions = Tensor::<B, 1, Int>::arange(0..seq as i64, &device).unsqueeze::<2>().repeat_dim(0, batch);
        let token_types = Tensor::<B, 2, Int>::zeros([batch, seq], &device);
        let e = &self.embeddings;
        let mut x = e.norm.forward(
            e.word.forward(input_ids) + e.position.forward(positions) + e.token_type.forward(token_types),
        );
        // exp(-1e9) is exactly 0 in f32: padded keys contribute nothing.
        let bias = (mask - 1.0).mul_scalar(1e9).reshape([batch, 1, 1, seq]);
        for layer in &self.layers {
            x = layer.forward(x, bias.clone(), self.heads);
        }
        x
    }
}

/// sentence-transformers' mean pooling: the average of the token states where `mask` is 1.
pub fn mean_pool<B: Backend>(hidden: Tensor<B, 3>, mask: Tensor<B, 2>) -> Tensor<B, 2> {
    let [batch, _, dim] = hidden.dims();
    let mask = mask.unsqueeze_dim::<3>(2);
    let summed = (hidden * mask.clone()).sum_dim(1).reshape([batch, dim]);
    let counts = mask.sum_dim(1).reshape([batch, 1]).clamp_min(1e-9);
    summed / counts
}
