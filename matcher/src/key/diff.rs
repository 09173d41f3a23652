//! Where two normalized requests differ: the first differing JSON Pointer and a bounded count of differing
//! leaves, which rank the closest asset in a miss's explanation.

use serde_json::Value;

/// Equal as exact decimals (`1` and `1.0` are the same number), as keys compare them.
fn same_number(p: &serde_json::Number, q: &serde_json::Number) -> bool {
    crate::canonical::canonical_number(&p.to_string()) == crate::canonical::canonical_number(&q.to_string())
}

/// The JSON Pointer of the first place where two normalized values differ, in canonical order.
pub fn first_difference(a: &Value, b: &Value) -> Option<String> {
    fn walk(a: &Value, b: &Value, path: &mut String) -> bool {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort_unstable_by(|p, q| p.as_bytes().cmp(q.as_bytes()));
                keys.dedup();
                for k in keys {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                    match (x.get(k), y.get(k)) {
                        (Some(p), Some(q)) => {
                            if walk(p, q, path) {
                                return true;
                            }
                        }
                        _ => return true,
                    }
                    path.truncate(len);
                }
                false
            }
            (Value::Array(x), Value::Array(y)) => {
                for i in 0..x.len().max(y.len()) {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&i.to_string());
                    match (x.get(i), y.get(i)) {
                        (Some(p), Some(q)) => {
                            if walk(p, q, path) {
                                return true;
                            }
                        }
                        _ => return true,
                    }
                    path.truncate(len);
                }
                false
            }
            (Value::Number(p), Value::Number(q)) => !same_number(p, q),
            _ => a != b,
        }
    }
    let mut path = String::new();
    walk(a, b, &mut path).then_some(path)
}

/// How many leaves differ between two values, stopping early at `cap`. Used to rank the closest asset.
pub fn difference_count(a: &Value, b: &Value, cap: usize) -> usize {
    fn walk(a: &Value, b: &Value, n: &mut usize, cap: usize) {
        if *n >= cap {
            return;
        }
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                for (k, p) in x {
                    match y.get(k) {
                        Some(q) => walk(p, q, n, cap),
                        None => *n += 1,
                    }
                }
                *n += y.keys().filter(|k| !x.contains_key(*k)).count();
            }
            (Value::Array(x), Value::Array(y)) => {
                for (p, q) in x.iter().zip(y) {
                    walk(p, q, n, cap);
                }
                *n += x.len().abs_diff(y.len());
            }
            (Value::Number(p), Value::Number(q)) => {
                if !same_number(p, q) {
                    *n += 1;
                }
            }
            _ => {
                if a != b {
                    *n += 1
                }
            }
        }
    }
    let mut n = 0;
    walk(a, b, &mut n, cap);
    n.min(cap)
}
