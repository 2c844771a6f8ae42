//! A sentence encoder: tokenizer + BERT + mean pooling + L2 normalisation
//! (sentence-transformers semantics), batched with padding masks.
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use tokenizers::{Tokenizer, TruncationParams};

use super::bert::{mean_pool, BertConfig, BertModel};

/// Texts per forward pass. Texts are sorted by length first so a batch pads little.
const BATCH: usize = 32;

pub struct TextEncoder<B: Backend> {
    tokenizer: Tokenizer,
    model: BertModel<B>,
    device: B::Device,
    pad_id: u32,
    pub max_seq_length: usize,
    pub dim: usize,
}

/// Bytes of text kept per token of `max_seq_length` before tokenising: a WordPiece token is at
/// most 100 characters of a word (a longer word is one [UNK]), so only a text padded with
/// thousands of spaces or control characters could lose tokens to the cut.
const MAX_TEXT_BYTES_PER_TOKEN: usize = 512;

impl<B: Backend> TextEncoder<B> {
    /// `tokenizer_json` is the model's `tokenizer.json`; `max_seq_length` truncates (tokens,
    /// special tokens included), as sentence-transformers does.
    pub fn new(
        config: &BertConfig,
        model: BertModel<B>,
        tokenizer_json: &str,
        max_seq_length: usize,
        device: B::Device,
    ) -> Result<Self, String> {
        let mut tokenizer = Tokenizer::from_bytes(tokenizer_json.as_bytes()).map_err(|e| format!("tokenizer.json: {e}"))?;
        let max_seq_length = max_seq_length.min(config.max_position_embeddings);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: max_seq_length, ..Default::default() }))
            .map_err(|e| format!("tokenizer truncation: {e}"))?;
        tokenizer.with_padding(None);
        let pad_id = tokenizer.token_to_id("[PAD]").unwrap_or(0);
        Ok(TextEncoder { tokenizer, model, device, pad_id, max_seq_length, dim: config.hidden_size })
    }

    /// Token ids of one text, truncated, with [CLS] … [SEP].
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, String> {
        // The tokenizer normalises and splits the whole text before it truncates, at ≈ 10–20
        // bytes of memory per byte of text: a text far past what `max_seq_length` tokens can
        // cover is cut first (at a character boundary), so a huge one costs no more.
        let limit = self.max_seq_length.saturating_mul(MAX_TEXT_BYTES_PER_TOKEN);
        let text = if text.len() > limit { &text[..text.floor_char_boundary(limit)] } else { text };
        let encoding = self.tokenizer.encode(text, true).map_err(|e| format!("tokenizing: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Unit-length embeddings, one per text, in input order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        let tokens = texts.iter().map(|t| self.tokenize(t)).collect::<Result<Vec<_>, _>>()?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| tokens[i].len());
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(BATCH) {
            let seq = chunk.iter().map(|&i| tokens[i].len()).max().unwrap_or(0).max(1);
            let mut ids = Vec::with_capacity(chunk.len() * seq);
            let mut mask = Vec::with_capacity(chunk.len() * seq);
            for &i in chunk {
                let t = &tokens[i];
                ids.extend(t.iter().map(|&id| id as i64));
                ids.extend(std::iter::repeat_n(self.pad_id as i64, seq - t.len()));
                mask.extend(std::iter::repeat_n(1.0f32, t.len()));
                mask.extend(std::iter::repeat_n(0.0f32, seq - t.len()));
            }
            let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [chunk.len(), seq]), &self.device);
            let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [chunk.len(), seq]), &self.device);
            let pooled = mean_pool(self.model.forward(ids, mask.clone()), mask);
            let values: Vec<f32> = pooled.into_data().convert::<f32>().into_vec().map_err(|e| format!("{e:?}"))?;
            for (row, &i) in values.chunks_exact(self.dim).zip(chunk) {
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                out[i] = row.iter().map(|v| v / norm).collect();
            }
        }
        Ok(out)
    }
}
