//! Undo/redo as a bounded stack of document snapshots.
//!
//! Why snapshots rather than inverse commands: every message kind (merge down, replacing a
//! layer by sub-layers, reorder, ...) would need its own hand-written inverse, and each one is a
//! place for undo to drift from redo. A snapshot is a clone of [`Document`], and a layer's
//! pixels sit behind an `Arc`, so a snapshot costs one small struct per layer plus a reference
//! count; no pixel buffer is copied for an opacity tweak or a rename. Buffers stay alive only
//! while some snapshot still refers to them, and the depth bound caps that.

use std::collections::VecDeque;

use super::document::Document;

/// Default number of undo steps kept.
pub const DEFAULT_HISTORY_DEPTH: usize = 100;

/// Undo and redo stacks of whole-document snapshots.
#[derive(Clone, Debug)]
pub struct History {
    undo: VecDeque<Document>,
    redo: Vec<Document>,
    depth: usize,
}

impl History {
    /// A history keeping at most `depth` undo steps (at least 1).
    pub fn new(depth: usize) -> Self {
        History {
            undo: VecDeque::new(),
            redo: Vec::new(),
            depth: depth.max(1),
        }
    }

    /// Records `before`, the state a new change replaced. Clears the redo stack and drops the
    /// oldest step past the depth bound.
    pub fn record(&mut self, before: Document) {
        self.redo.clear();
        if self.undo.len() == self.depth {
            self.undo.pop_front();
        }
        self.undo.push_back(before);
    }

    /// Swaps `current` with the last undo snapshot; returns whether there was one.
    pub fn undo(&mut self, current: &mut Document) -> bool {
        match self.undo.pop_back() {
            Some(prev) => {
                self.redo.push(std::mem::replace(current, prev));
                true
            }
            None => false,
        }
    }

    /// Swaps `current` with the last redo snapshot; returns whether there was one.
    pub fn redo(&mut self, current: &mut Document) -> bool {
        match self.redo.pop() {
            Some(next) => {
                self.undo.push_back(std::mem::replace(current, next));
                true
            }
            None => false,
        }
    }

    /// Whether [`History::undo`] would do something.
    pub fn can_undo(&self) -> bool {
        !self.undo.is_empty()
    }

    /// Whether [`History::redo`] would do something.
    pub fn can_redo(&self) -> bool {
        !self.redo.is_empty()
    }

    /// Number of undo steps held.
    pub fn undo_len(&self) -> usize {
        self.undo.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_bound_drops_the_oldest_step() {
        let mut h = History::new(2);
        for w in 1..=3 {
            h.record(Document::new(w, 1));
        }
        assert_eq!(h.undo_len(), 2);
        let mut cur = Document::new(9, 1);
        assert!(h.undo(&mut cur));
        assert_eq!(cur.width, 3);
        assert!(h.undo(&mut cur));
        assert_eq!(cur.width, 2);
        assert!(!h.undo(&mut cur));
        assert!(h.redo(&mut cur) && h.redo(&mut cur));
        assert_eq!(cur.width, 9);
        assert!(!h.redo(&mut cur));
    }
}
