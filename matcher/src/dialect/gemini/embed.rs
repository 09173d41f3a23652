//! Synthesized `embedContent`, `batchEmbedContents` and `countTokens` answers.
//!
//! Vectors are deterministic ([`embedding_vector`]): seeded by the model and the content's text (or, for a
//! content with non-text parts, its canonical JSON), so the same input always embeds the same. The
//! dimension is the request's `outputDimensionality` (top level on the Gemini API, under
//! `embedContentConfig` on Vertex AI), else the rule's, else the model's default.

use serde_json::{json, Value};

use super::generate::{content_text, contents_tokens, prompt_tokens};
use crate::dialect::SynthInput;
use crate::synth::{embedding_seed, embedding_vector, f32_value, MAX_DIMENSIONS, MAX_EMBEDDING_FLOATS};

/// A model's default embedding dimension: 3072 for the Gemini embedding models, else 768
/// (`text-embedding-004`/`005`, `text-multilingual-embedding-002`, `embedding-001`).
fn default_dimensions(model: &str) -> usize {
    if model.contains("gemini-embedding") {
        3072
    } else {
        768
    }
}

/// The dimension one embed request asks for: its own, else the rule's, else the model's.
fn dimensions(request: &Value, rule: Option<usize>, model: &str) -> Option<usize> {
    let asked = request
        .get("outputDimensionality")
        .or_else(|| request.get("embedContentConfig").and_then(|c| c.get("outputDimensionality")))
        .and_then(Value::as_u64);
    let dims = match asked {
        Some(d) => usize::try_from(d).ok()?,
        None => rule.unwrap_or_else(|| default_dimensions(model)),
    };
    (1..=MAX_DIMENSIONS).contains(&dims).then_some(dims)
}

/// The seed of a content's vector: its text when all its parts are text, else its canonical JSON.
fn seed(model: &str, content: Option<&Value>) -> Vec<u8> {
    let content = content.unwrap_or(&Value::Null);
    let all_text = content
        .get("parts")
        .and_then(Value::as_array)
        .is_some_and(|parts| parts.iter().all(|p| p.get("text").is_some_and(Value::is_string)));
    if all_text {
        embedding_seed(model, "text", &content_text(content))
    } else {
        embedding_seed(model, "content", &crate::canonical::to_canonical(content))
    }
}

/// One `ContentEmbedding` and the tokens of its content.
fn embedding(model: &str, content: Option<&Value>, dims: usize) -> (Value, u64) {
    let values: Vec<Value> = embedding_vector(&seed(model, content), dims).into_iter().map(f32_value).collect();
    (json!({"values": values}), contents_tokens(content))
}

fn usage(tokens: u64) -> Value {
    json!({"promptTokenCount": tokens, "totalTokenCount": tokens})
}

/// `{"embedding": {"values": [...]}, "usageMetadata": ...}` for an `embedContent` request.
pub(super) fn embed_content(input: &SynthInput<'_>) -> Option<Value> {
    let dims = dimensions(input.request, input.dimensions, input.model)?;
    if crate::budget::embeddings_over_budget(dims, dims, false, input.answer_budget) {
        return None;
    }
    let (e, tokens) = embedding(input.model, input.request.get("content"), dims);
    Some(json!({"embedding": e, "usageMetadata": usage(tokens)}))
}

/// `{"embeddings": [{"values": [...]}, ...], "usageMetadata": ...}` for a `batchEmbedContents` request: one
/// vector per `requests[]` entry, each with its own dimension.
pub(super) fn batch_embed_contents(input: &SynthInput<'_>) -> Option<Value> {
    let empty = Vec::new();
    let requests = input.request.get("requests").and_then(Value::as_array).unwrap_or(&empty);
    let mut floats = 0usize;
    let mut plan = Vec::with_capacity(requests.len());
    for r in requests {
        let dims = dimensions(r, input.dimensions, input.model)?;
        floats = floats.saturating_add(dims);
        if floats > MAX_EMBEDDING_FLOATS
            || crate::budget::embeddings_over_budget(floats, dims, false, input.answer_budget)
        {
            return None;
        }
        plan.push((r.get("content"), dims));
    }
    let mut tokens = 0u64;
    let mut embeddings = Vec::with_capacity(plan.len());
    for (content, dims) in plan {
        let (e, t) = embedding(input.model, content, dims);
        tokens = tokens.saturating_add(t);
        embeddings.push(e);
    }
    Some(json!({"embeddings": embeddings, "usageMetadata": usage(tokens)}))
}

/// `{"totalTokens": n, "promptTokensDetails": [...]}` for a `countTokens` request (`contents`, Vertex AI's
/// `systemInstruction` and `tools`, or a whole `generateContentRequest`).
pub(super) fn count_tokens(request: &Value) -> Value {
    let n = prompt_tokens(request.get("generateContentRequest").unwrap_or(request));
    json!({"totalTokens": n, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": n}]})
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use crate::synth::Answer;

    fn input<'a>(request: &'a Value, model: &'a str, dimensions: Option<usize>) -> SynthInput<'a> {
        static NOTHING: Answer = Answer::Nothing;
        SynthInput {
            request,
            model,
            answer: &NOTHING,
            dimensions,
            now_secs: 0,
            text_cap: crate::limits::MAX_TEXT_BYTES,
            answer_budget: crate::limits::ANSWER_BUDGET,
        }
    }

    fn values(v: &Value) -> Vec<f64> {
        v["values"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    }

    #[test]
    fn vectors_are_deterministic_per_model_and_text_with_the_asked_dimension() {
        let one = json!({"content": {"parts": [{"text": "The quick brown fox"}]}, "outputDimensionality": 8});
        let a = embed_content(&input(&one, "text-embedding-004", None)).unwrap();
        let b = embed_content(&input(&one, "text-embedding-004", None)).unwrap();
        assert_eq!(a, b);
        assert_eq!(values(&a["embedding"]).len(), 8);
        let norm: f64 = values(&a["embedding"]).iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert!(a["usageMetadata"]["promptTokenCount"].as_u64().unwrap() > 0);
        // Vertex AI's spelling of the dimension; another model gives another vector.
        let vertex = json!({"content": {"parts": [{"text": "The quick brown fox"}]}, "embedContentConfig": {"outputDimensionality": 8}});
        assert_eq!(embed_content(&input(&vertex, "text-embedding-004", None)).unwrap(), a);
        assert_ne!(embed_content(&input(&vertex, "gemini-embedding-001", None)).unwrap(), a);
        // Defaults: the rule's dimension, else the model's.
        let bare = json!({"content": {"parts": [{"text": "x"}]}});
        assert_eq!(values(&embed_content(&input(&bare, "m", Some(5))).unwrap()["embedding"]).len(), 5);
        assert_eq!(
            values(&embed_content(&input(&bare, "gemini-embedding-001", None)).unwrap()["embedding"]).len(),
            3072
        );
        assert!(embed_content(&input(&json!({"outputDimensionality": 0}), "m", None)).is_none());
    }

    #[test]
    fn a_batch_embeds_each_request_like_embed_content() {
        let batch = json!({"requests": [
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "The quick brown fox"}]}, "outputDimensionality": 8},
            {"model": "models/text-embedding-004", "content": {"parts": [{"text": "jumps over"}]}, "outputDimensionality": 4},
        ]});
        let out = batch_embed_contents(&input(&batch, "text-embedding-004", None)).unwrap();
        let single = json!({"content": {"parts": [{"text": "The quick brown fox"}]}, "outputDimensionality": 8});
        let one = embed_content(&input(&single, "text-embedding-004", None)).unwrap();
        assert_eq!(out["embeddings"][0], one["embedding"]);
        assert_eq!(values(&out["embeddings"][1]).len(), 4);
        let huge = json!({"requests": [{"outputDimensionality": 65536}, {"outputDimensionality": 65536}]});
        let many: Vec<Value> = (0..70).map(|_| huge["requests"][0].clone()).collect();
        assert!(batch_embed_contents(&input(&json!({"requests": many}), "m", None)).is_none());
    }

    #[test]
    fn token_counts_read_contents_or_a_generate_content_request() {
        let req = json!({"contents": [{"role": "user", "parts": [{"text": "How many tokens is this sentence?"}]}]});
        let n = count_tokens(&req)["totalTokens"].as_u64().unwrap();
        assert!(n > 3, "{n}");
        let wrapped = json!({"generateContentRequest": {"model": "models/m", "contents": req["contents"]}});
        assert_eq!(count_tokens(&wrapped)["totalTokens"], n);
        // Media parts cost a flat price; their data is never read.
        let image =
            json!({"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "A".repeat(100_000)}}]}]});
        assert_eq!(count_tokens(&image)["totalTokens"], crate::tokens::MEDIA_TOKENS);
    }
}
