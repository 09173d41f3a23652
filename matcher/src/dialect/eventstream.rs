//! AWS's binary event stream framing (`application/vnd.amazon.eventstream`), as Bedrock streams answers.
//!
//! A message is a 12-byte prelude (total length and headers length, big-endian u32, then the CRC32 of those
//! 8 bytes), the headers, the payload and the CRC32 of everything before it. A header is a 1-byte name
//! length, the name, a 1-byte value type and the value (strings: a u16 length and UTF-8). Events carry
//! `:message-type: event`, `:event-type` (the member of the stream union) and `:content-type`; errors are
//! `:message-type: exception` (`:exception-type`) or `error` (`:error-code`, `:error-message`). The limits
//! are botocore's: the client rejects a message whose headers exceed 128 KiB or whose payload exceeds
//! 24 MiB, so neither is written or accepted here.

/// The `content-type` of an event stream.
pub(crate) const CONTENT_TYPE: &str = "application/vnd.amazon.eventstream";

/// Bytes of the prelude (two lengths and their CRC).
const PRELUDE: usize = 12;
/// Prelude and message CRC: the smallest message.
const OVERHEAD: usize = PRELUDE + 4;
/// botocore's `_MAX_HEADERS_LENGTH`.
const MAX_HEADERS: usize = 128 * 1024;
/// botocore's `_MAX_PAYLOAD_LENGTH`.
pub(crate) const MAX_PAYLOAD: usize = 24 * 1024 * 1024;

/// Header value types (only strings are written).
const TYPE_STRING: u8 = 7;

/// One decoded message: its string headers (other header types are skipped) and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) payload: Vec<u8>,
    /// Byte offset of the message in the stream.
    pub(crate) offset: usize,
}

impl Message {
    /// The value of a string header.
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// `:event-type` of an event, `:exception-type` of an exception, `:error-code` of an error.
    pub(crate) fn name(&self) -> &str {
        self.header(":event-type")
            .or_else(|| self.header(":exception-type"))
            .or_else(|| self.header(":error-code"))
            .unwrap_or("message")
    }

    /// The error an `exception` or `error` message reports, `None` for an event.
    pub(crate) fn error(&self) -> Option<String> {
        match self.header(":message-type") {
            Some("exception") => {
                let message = serde_json::from_slice::<serde_json::Value>(&self.payload)
                    .ok()
                    .and_then(|v| {
                        v.get("message").or_else(|| v.get("Message")).and_then(|m| m.as_str()).map(String::from)
                    })
                    .unwrap_or_else(|| String::from_utf8_lossy(&self.payload).into_owned());
                Some(format!("{}: {message}", self.name()))
            }
            Some("error") => Some(format!("{}: {}", self.name(), self.header(":error-message").unwrap_or_default())),
            _ => None,
        }
    }
}

/// Why bytes are not an event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FrameError {
    /// 0-based message position.
    pub(crate) index: usize,
    /// Byte offset of the message.
    pub(crate) offset: usize,
    pub(crate) reason: String,
}

/// Appends an event message: `:event-type`, `:content-type: application/json`, `:message-type: event`.
/// `false` (nothing written) when the payload exceeds what a client accepts.
pub(crate) fn write_event(out: &mut Vec<u8>, event_type: &str, payload: &[u8]) -> bool {
    write_message(
        out,
        &[(":event-type", event_type), (":content-type", "application/json"), (":message-type", "event")],
        payload,
    )
}

/// Appends one message with string headers. `false` (nothing written) when a header or the payload is too
/// long for the format or for the client.
pub(crate) fn write_message(out: &mut Vec<u8>, headers: &[(&str, &str)], payload: &[u8]) -> bool {
    let mut head = Vec::new();
    for (name, value) in headers {
        let (Ok(n), Ok(v)) = (u8::try_from(name.len()), u16::try_from(value.len())) else {
            return false;
        };
        head.push(n);
        head.extend_from_slice(name.as_bytes());
        head.push(TYPE_STRING);
        head.extend_from_slice(&v.to_be_bytes());
        head.extend_from_slice(value.as_bytes());
    }
    if head.len() > MAX_HEADERS || payload.len() > MAX_PAYLOAD {
        return false;
    }
    let total = OVERHEAD + head.len() + payload.len();
    let (Ok(total), Ok(head_len)) = (u32::try_from(total), u32::try_from(head.len())) else {
        return false;
    };
    let start = out.len();
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&head_len.to_be_bytes());
    let prelude_crc = crc32fast::hash(out.get(start..).unwrap_or_default());
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(payload);
    let message_crc = crc32fast::hash(out.get(start..).unwrap_or_default());
    out.extend_from_slice(&message_crc.to_be_bytes());
    true
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([*s.first()?, *s.get(1)?, *s.get(2)?, *s.get(3)?]))
}

/// Does `bytes` start with a well-formed event stream prelude (lengths in range, prelude CRC right)?
pub(crate) fn looks_like(bytes: &[u8]) -> bool {
    prelude(bytes).is_ok()
}

/// The total and headers lengths of the message at the start of `b`, checked.
fn prelude(b: &[u8]) -> Result<(usize, usize), String> {
    let (Some(total), Some(head), Some(crc)) = (be32(b, 0), be32(b, 4), be32(b, 8)) else {
        return Err(format!("{} bytes are left, less than a {PRELUDE}-byte prelude", b.len()));
    };
    if crc32fast::hash(b.get(..8).unwrap_or_default()) != crc {
        return Err("the prelude CRC does not match".into());
    }
    let (total, head) = (total as usize, head as usize);
    let payload = total.checked_sub(OVERHEAD).and_then(|n| n.checked_sub(head));
    match payload {
        None => Err(format!("total length {total} is smaller than its headers ({head}) and framing")),
        Some(_) if head > MAX_HEADERS => Err(format!("headers length {head} exceeds {MAX_HEADERS}")),
        Some(p) if p > MAX_PAYLOAD => Err(format!("payload length {p} exceeds {MAX_PAYLOAD}")),
        Some(_) => Ok((total, head)),
    }
}

/// Decodes a whole event stream. Every message must be complete and both CRCs must match.
pub(crate) fn decode(bytes: &[u8]) -> Result<Vec<Message>, FrameError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let index = out.len();
        let fail = |reason: String| FrameError { index, offset: at, reason };
        let rest = bytes.get(at..).unwrap_or_default();
        let (total, head_len) = prelude(rest).map_err(fail)?;
        let Some(msg) = rest.get(..total) else {
            return Err(fail(format!("the message is cut short: {total} bytes announced, {} left", rest.len())));
        };
        let body_end = total - 4;
        if Some(crc32fast::hash(msg.get(..body_end).unwrap_or_default())) != be32(msg, body_end) {
            return Err(fail("the message CRC does not match".into()));
        }
        let headers = parse_headers(msg.get(PRELUDE..PRELUDE + head_len).unwrap_or_default()).map_err(fail)?;
        let payload = msg.get(PRELUDE + head_len..body_end).unwrap_or_default().to_vec();
        out.push(Message { headers, payload, offset: at });
        at += total;
    }
    Ok(out)
}

fn parse_headers(mut b: &[u8]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let short = || "a header is cut short".to_string();
    while let Some((&name_len, rest)) = b.split_first() {
        let (name, rest) = rest.split_at_checked(usize::from(name_len)).ok_or_else(short)?;
        let name = std::str::from_utf8(name).map_err(|_| "a header name is not UTF-8".to_string())?.to_string();
        let (&ty, rest) = rest.split_first().ok_or_else(short)?;
        let used = match ty {
            0 | 1 => 0,
            2 => 1,
            3 => 2,
            4 => 4,
            5 | 8 => 8,
            9 => 16,
            6 | 7 => match rest {
                [hi, lo, ..] => 2 + usize::from(u16::from_be_bytes([*hi, *lo])),
                _ => return Err(short()),
            },
            t => return Err(format!("header {name} has unknown value type {t}")),
        };
        let (value, rest) = rest.split_at_checked(used).ok_or_else(short)?;
        b = rest;
        if seen.contains(&name) {
            return Err(format!("header {name} appears twice"));
        }
        seen.push(name.clone());
        if ty == TYPE_STRING {
            let text = std::str::from_utf8(value.get(2..).unwrap_or_default())
                .map_err(|_| format!("header {name} is not UTF-8"))?;
            out.push((name, text.to_string()));
        }
    }
    Ok(out)
}

/// A short printable summary of messages, for test failure output.
#[cfg(test)]
pub(crate) fn summary(messages: &[Message]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for m in messages {
        let _ = writeln!(s, "{} {}", m.name(), String::from_utf8_lossy(&m.payload));
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_written_message_has_awss_layout_and_decodes() {
        let mut out = Vec::new();
        assert!(write_event(&mut out, "messageStart", br#"{"role":"assistant"}"#));
        // total = 16 + headers (3 × (1 + name + 1 + 2 + value)) + payload
        let headers = (1 + 11 + 3 + 12) + (1 + 13 + 3 + 16) + (1 + 13 + 3 + 5);
        assert_eq!(out.len(), 16 + headers + 20);
        assert_eq!(u32::from_be_bytes(out[0..4].try_into().unwrap()) as usize, out.len());
        assert_eq!(u32::from_be_bytes(out[4..8].try_into().unwrap()) as usize, headers);
        assert_eq!(u32::from_be_bytes(out[8..12].try_into().unwrap()), crc32fast::hash(&out[..8]));
        let n = out.len();
        assert_eq!(u32::from_be_bytes(out[n - 4..].try_into().unwrap()), crc32fast::hash(&out[..n - 4]));
        let msgs = decode(&out).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].name(), "messageStart");
        assert_eq!(msgs[0].header(":message-type"), Some("event"));
        assert_eq!(msgs[0].payload, br#"{"role":"assistant"}"#);
        assert!(msgs[0].error().is_none());
    }

    #[test]
    fn known_vector_from_the_aws_spec_decodes() {
        // The smallest message of the AWS event stream test suite ("empty_message"): no headers, no payload.
        let empty = [0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x05, 0xc2, 0x48, 0xeb, 0x7d, 0x98, 0xc8, 0xff];
        let msgs = decode(&empty).unwrap();
        assert_eq!(msgs.len(), 1);
        assert!(msgs[0].headers.is_empty() && msgs[0].payload.is_empty());
        let mut mine = Vec::new();
        assert!(write_message(&mut mine, &[], &[]));
        assert_eq!(mine, empty);
    }

    #[test]
    fn damaged_streams_are_errors_that_say_where() {
        let mut out = Vec::new();
        write_event(&mut out, "a", b"{}");
        let first = out.len();
        write_event(&mut out, "b", b"{\"x\":1}");
        assert_eq!(decode(&out).unwrap().len(), 2);
        let mut bad = out.clone();
        bad[first + 20] ^= 1;
        let e = decode(&bad).unwrap_err();
        assert_eq!((e.index, e.offset), (1, first));
        assert!(e.reason.contains("message CRC"), "{e:?}");
        let mut bad = out.clone();
        bad[1] ^= 1;
        assert!(decode(&bad).unwrap_err().reason.contains("prelude CRC"));
        assert!(decode(&out[..out.len() - 1]).unwrap_err().reason.contains("cut short"));
        assert!(decode(b"data: {}\n\n").is_err());
        assert!(!looks_like(b"data: {}\n\n"));
        assert!(looks_like(&out));
        assert!(decode(&[]).unwrap().is_empty());
    }

    #[test]
    fn exceptions_and_errors_are_reported() {
        let mut out = Vec::new();
        write_message(
            &mut out,
            &[
                (":exception-type", "throttlingException"),
                (":message-type", "exception"),
                (":content-type", "application/json"),
            ],
            br#"{"message":"slow down"}"#,
        );
        write_message(&mut out, &[(":message-type", "error"), (":error-code", "X"), (":error-message", "boom")], b"");
        let msgs = decode(&out).unwrap();
        assert_eq!(msgs[0].error().as_deref(), Some("throttlingException: slow down"));
        assert_eq!(msgs[1].error().as_deref(), Some("X: boom"));
        assert!(summary(&msgs).contains("throttlingException"));
    }

    #[test]
    fn other_header_types_are_skipped_and_bad_ones_rejected() {
        // bool, byte, short, int, long, bytes, timestamp, uuid, then a string.
        let mut head = Vec::new();
        let mut add = |name: &str, ty: u8, value: &[u8]| {
            head.push(name.len() as u8);
            head.extend_from_slice(name.as_bytes());
            head.push(ty);
            head.extend_from_slice(value);
        };
        add("t", 0, &[]);
        add("b", 2, &[1]);
        add("s", 3, &[0, 1]);
        add("i", 4, &[0, 0, 0, 1]);
        add("l", 5, &[0; 8]);
        add("y", 6, &[0, 2, 9, 9]);
        add("ts", 8, &[0; 8]);
        add("u", 9, &[0; 16]);
        add("k", 7, &[0, 1, b'v']);
        assert_eq!(parse_headers(&head).unwrap(), vec![("k".to_string(), "v".to_string())]);
        assert!(parse_headers(&[1, b'x', 42]).unwrap_err().contains("unknown value type"));
        assert!(parse_headers(&[1, b'x', 7, 0, 5, b'a']).unwrap_err().contains("cut short"));
        assert!(parse_headers(&[1, b'x', 0, 1, b'x', 1]).unwrap_err().contains("twice"));
    }

    #[test]
    fn oversized_payloads_are_not_written() {
        let mut out = Vec::new();
        assert!(!write_event(&mut out, "x", &vec![b' '; MAX_PAYLOAD + 1]));
        assert!(out.is_empty());
        assert!(!write_message(&mut out, &[("k", &"v".repeat(70_000))], b""));
    }
}
