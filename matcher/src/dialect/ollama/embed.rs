//! Synthesized Ollama embeddings: `/api/embed` (`input`: one text or a list; `{"model", "embeddings": [[...]],
//! timings, "prompt_eval_count"}`) and the legacy `/api/embeddings` (`prompt`: one text; `{"embedding": [...]}`).
//!
//! Vectors are [`embedding_vector`]s seeded like OpenAI's, so a model and text give the same unit vector
//! whichever API asks. The dimension is the request's `dimensions`, else the rule's, else the model's own.

use serde_json::{Map, Value};

use crate::dialect::shape::value_text;
use crate::dialect::SynthInput;
use crate::synth::{embedding_seed, embedding_vector, f32_value, MAX_DIMENSIONS, MAX_EMBEDDING_FLOATS};
use crate::tokens::estimate_tokens;

/// The native dimension of the common Ollama embedding models (768, e.g. `nomic-embed-text`, when unknown).
fn default_dimensions(model: &str) -> usize {
    let m = model.to_ascii_lowercase();
    if m.contains("minilm") {
        384
    } else if ["mxbai-embed-large", "bge-m3", "bge-large", "snowflake-arctic-embed"].iter().any(|n| m.contains(n)) {
        1024
    } else {
        768
    }
}

fn dimensions(input: &SynthInput<'_>) -> usize {
    input
        .request
        .get("dimensions")
        .and_then(Value::as_u64)
        .and_then(|d| usize::try_from(d).ok())
        .filter(|d| (1..=MAX_DIMENSIONS).contains(d))
        .or(input.dimensions)
        .unwrap_or_else(|| default_dimensions(input.model))
}

fn vector(model: &str, text: &str, dims: usize) -> Value {
    Value::Array(embedding_vector(&embedding_seed(model, "text", text), dims).into_iter().map(f32_value).collect())
}

/// `/api/embed`: one vector per input, with Ollama's timings and prompt token count.
pub(super) fn synthesize_embed(input: &SynthInput<'_>) -> Option<Value> {
    let texts: Vec<String> = match input.request.get("input") {
        Some(Value::Array(a)) => a.iter().map(value_text).collect(),
        Some(v) => vec![value_text(v)],
        None => Vec::new(),
    };
    let dims = dimensions(input);
    let floats = texts.len().saturating_mul(dims);
    if floats > MAX_EMBEDDING_FLOATS || crate::budget::embeddings_over_budget(floats, dims, false, input.answer_budget)
    {
        return None;
    }
    let tokens = texts.iter().map(|t| estimate_tokens(t)).fold(0, u64::saturating_add);
    let embeddings = texts.iter().map(|t| vector(input.model, t, dims)).collect();
    let mut body = Map::new();
    body.insert("model".into(), input.model.into());
    body.insert("embeddings".into(), Value::Array(embeddings));
    body.extend(super::timings(tokens, 0));
    Some(Value::Object(body))
}

/// Legacy `/api/embeddings`: one vector for `prompt`, and nothing else (as Ollama answers it).
pub(super) fn synthesize_embeddings(input: &SynthInput<'_>) -> Option<Value> {
    let prompt = input.request.get("prompt").map(value_text).unwrap_or_default();
    let dims = dimensions(input);
    if dims > MAX_EMBEDDING_FLOATS || crate::budget::embeddings_over_budget(dims, dims, false, input.answer_budget) {
        return None;
    }
    let mut body = Map::new();
    body.insert("embedding".into(), vector(input.model, &prompt, dims));
    Some(Value::Object(body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use crate::dialect::classify;
    use crate::synth::{SynthRule, Synthesizer};
    use crate::template::Rng;
    use serde_json::{json, Value};

    fn synth(path: &str, dimensions: Option<usize>, request: Value) -> Value {
        let rule =
            SynthRule { operation: "*".into(), model: "*".into(), text: None, echo: false, dimensions, latency: None };
        // An embeddings-only rule names its operation.
        let op = classify("POST", path).unwrap().operation.name().to_string();
        let s = Synthesizer::compile(&[SynthRule { operation: op, ..rule }]).unwrap();
        s.synthesize(&classify("POST", path).unwrap(), &request, 1_764_403_200, &mut Rng::new(1)).unwrap()
    }

    fn floats(v: &Value) -> Vec<f64> {
        v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
    }

    #[test]
    fn embed_answers_one_unit_vector_per_input_deterministically() {
        let v = synth(
            "/api/embed",
            None,
            json!({"model": "all-minilm", "input": ["Why is the sky blue?", "Why is the grass green?"]}),
        );
        let e = v["embeddings"].as_array().unwrap();
        assert_eq!(e.len(), 2);
        let (a, b) = (floats(&e[0]), floats(&e[1]));
        assert_eq!(a.len(), 384);
        let norm: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "{norm}");
        assert_ne!(a, b);
        assert_eq!(v["model"], "all-minilm");
        assert!(v["prompt_eval_count"].as_u64().unwrap() >= 10);
        assert!(v["total_duration"].as_u64().unwrap() > v["load_duration"].as_u64().unwrap());
        assert!(v.get("eval_count").is_none());
        // One text, another call: the same vector; the request's dimensions win over the rule's.
        let one = synth("/api/embed", Some(64), json!({"model": "all-minilm", "input": "Why is the sky blue?"}));
        assert_eq!(one["embeddings"][0].as_array().unwrap().len(), 64);
        let again = synth(
            "/api/embed",
            Some(64),
            json!({"model": "all-minilm", "input": "Why is the sky blue?", "dimensions": 384}),
        );
        assert_eq!(floats(&again["embeddings"][0]), a);
    }

    #[test]
    fn legacy_embeddings_answer_one_vector_for_the_prompt() {
        let v = synth("/api/embeddings", None, json!({"model": "nomic-embed-text", "prompt": "Why is the sky blue?"}));
        assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
        assert_eq!(v["embedding"].as_array().unwrap().len(), 768);
        let embed = synth("/api/embed", None, json!({"model": "nomic-embed-text", "input": "Why is the sky blue?"}));
        assert_eq!(v["embedding"], embed["embeddings"][0], "same model and text, same vector");
    }
}
