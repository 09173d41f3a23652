//! Per-VM memo of exact request bodies already decided: load tests replay the same few bodies, and a repeat
//! is then answered without parsing, normalizing or hashing it (the bytes are compared in full, so only an
//! identical body on the same route is a repeat; the answer is still rendered fresh).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use super::Facts;
use crate::dialect::Route;

pub(crate) use crate::limits::{MEMO_BODY, MEMO_BYTES};

/// What an exact request body came to the last time.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Remembered {
    /// This asset (by store position), with these request facts.
    Hit(usize, Facts),
    /// A passthrough miss.
    Forward,
}

/// Exact bodies and, per route they came on, what they came to.
type Entries = HashMap<Box<[u8]>, Vec<(Route, Remembered)>>;

/// The memo (see the module doc).
#[derive(Debug, Default)]
pub(crate) struct Memo {
    pub(crate) entries: RefCell<Entries>,
    pub(crate) bytes: Cell<usize>,
    /// True when off (`set_memo(false)`), so the derived default is on.
    pub(crate) disabled: bool,
}

impl Memo {
    pub(crate) fn get(&self, route: &Route, body: &[u8]) -> Option<Remembered> {
        if self.disabled || body.len() > MEMO_BODY {
            return None;
        }
        let entries = self.entries.borrow();
        entries.get(body)?.iter().find(|(r, _)| r == route).map(|(_, what)| *what)
    }

    pub(crate) fn put(&self, route: &Route, body: &[u8], what: Remembered) {
        if self.disabled || body.len() > MEMO_BODY {
            return;
        }
        let mut entries = self.entries.borrow_mut();
        if self.bytes.get() + body.len() > MEMO_BYTES {
            entries.clear();
            self.bytes.set(0);
        }
        let seen = entries.entry(body.into()).or_default();
        if seen.iter().any(|(r, _)| r == route) {
            return;
        }
        if seen.is_empty() {
            self.bytes.set(self.bytes.get() + body.len());
        }
        seen.push((route.clone(), what));
    }

    /// Forgets everything; `on` says whether to remember from now on.
    pub(crate) fn reset(&mut self, on: bool) {
        self.disabled = !on;
        self.entries.borrow_mut().clear();
        self.bytes.set(0);
    }
}
