//! Byte-pair merging. Every string that appears in the vocabulary or the merge list is interned,
//! so merging works on integer pairs; the result is the same as merging strings: the lowest-ranked
//! adjacent pair merges first (leftmost among equals), until no listed pair remains.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// The merge table.
pub struct Merges {
    /// Interned strings.
    strings: Vec<String>,
    index: HashMap<String, u32>,
    /// (left, right) -> (rank, merged)
    pairs: HashMap<(u32, u32), (u32, u32)>,
}

impl Merges {
    /// Builds the table from GGUF merge lines ("left right"), ranked by position. Like llama.cpp,
    /// a line splits at the first space after its first byte, and a repeated pair keeps its first
    /// rank.
    pub fn new(lines: &[String]) -> Merges {
        let mut m = Merges { strings: Vec::new(), index: HashMap::new(), pairs: HashMap::with_capacity(lines.len()) };
        for (rank, line) in lines.iter().enumerate() {
            // Byte search: the first character is often multi-byte (such as 'Ġ').
            let split = line.as_bytes().iter().skip(1).position(|&b| b == b' ').map(|p| p + 1);
            let (left, right) = match split {
                Some(p) => (&line[..p], &line[p + 1..]),
                None => ("", ""),
            };
            let (l, r) = (m.intern(left), m.intern(right));
            let merged = m.intern(&format!("{left}{right}"));
            m.pairs.entry((l, r)).or_insert((rank as u32, merged));
        }
        m
    }

    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.index.get(s) {
            return id;
        }
        let id = self.strings.len() as u32;
        self.strings.push(s.to_string());
        self.index.insert(s.to_string(), id);
        id
    }

    pub fn string(&self, id: u32) -> &str {
        &self.strings[id as usize]
    }

    /// Merges the characters of `word` (already byte-mapped) and returns the final pieces.
    pub fn apply<'a>(&'a self, word: &str, scratch: &mut Scratch) -> impl Iterator<Item = Piece<'a>> + 'a {
        scratch.symbols.clear();
        scratch.heap.clear();
        for (start, c) in word.char_indices() {
            let s = &word[start..start + c.len_utf8()];
            // Characters outside every merge stay as they are (as text).
            let id = self.index.get(s).copied();
            scratch.symbols.push(Symbol { id, text: s.to_string(), alive: true });
        }
        let n = scratch.symbols.len();
        let mut prev: Vec<isize> = (0..n as isize).map(|i| i - 1).collect();
        let mut next: Vec<isize> = (0..n as isize).map(|i| if i + 1 < n as isize { i + 1 } else { -1 }).collect();
        for i in 1..n {
            self.push_pair(scratch, i - 1, i);
        }
        while let Some(Reverse((_rank, left, right, lid, rid))) = scratch.heap.pop() {
            let (l, r) = (left as usize, right as usize);
            let valid = scratch.symbols[l].alive
                && scratch.symbols[r].alive
                && next[l] == r as isize
                && scratch.symbols[l].id == Some(lid)
                && scratch.symbols[r].id == Some(rid);
            if !valid {
                continue;
            }
            let merged = self.pairs[&(lid, rid)].1;
            let right_text = std::mem::take(&mut scratch.symbols[r].text);
            scratch.symbols[l].text.push_str(&right_text);
            scratch.symbols[l].id = Some(merged);
            scratch.symbols[r].alive = false;
            next[l] = next[r];
            if next[r] >= 0 {
                prev[next[r] as usize] = l as isize;
            }
            if prev[l] >= 0 {
                self.push_pair(scratch, prev[l] as usize, l);
            }
            if next[l] >= 0 {
                self.push_pair(scratch, l, next[l] as usize);
            }
        }
        let symbols = std::mem::take(&mut scratch.symbols);
        symbols.into_iter().filter(|s| s.alive).map(move |s| Piece { text: s.text, interned: s.id.map(|i| self.string(i)) })
    }

    fn push_pair(&self, scratch: &mut Scratch, l: usize, r: usize) {
        let (Some(lid), Some(rid)) = (scratch.symbols[l].id, scratch.symbols[r].id) else { return };
        if let Some(&(rank, _)) = self.pairs.get(&(lid, rid)) {
            scratch.heap.push(Reverse((rank, l as u32, r as u32, lid, rid)));
        }
    }
}

/// A final piece of a word.
pub struct Piece<'a> {
    pub text: String,
    /// The interned string (same text) when known.
    pub interned: Option<&'a str>,
}

struct Symbol {
    id: Option<u32>,
    text: String,
    alive: bool,
}

/// A candidate merge in the queue: (rank, left index, right index, left id, right id); ordered so
/// that the lowest rank, then the leftmost pair, comes out first.
type QueuedPair = Reverse<(u32, u32, u32, u32, u32)>;

/// Reusable buffers for `apply`.
#[derive(Default)]
pub struct Scratch {
    symbols: Vec<Symbol>,
    heap: BinaryHeap<QueuedPair>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(m: &Merges, w: &str) -> Vec<String> {
        let mut s = Scratch::default();
        m.apply(w, &mut s).map(|p| p.text).collect()
    }

    #[test]
    fn merges_by_rank_then_leftmost() {
        let lines: Vec<String> = ["a b", "b c", "ab c", "c c"].iter().map(|s| s.to_string()).collect();
        let m = Merges::new(&lines);
        assert_eq!(pieces(&m, "abc"), ["abc"]);
        // "b c" outranks "c c"; then "ab c" needs "ab", which never forms here.
        assert_eq!(pieces(&m, "bcc"), ["bc", "c"]);
        // Equal ranks merge leftmost first: "cccc" -> "cc cc".
        assert_eq!(pieces(&m, "cccc"), ["cc", "cc"]);
        assert_eq!(pieces(&m, "xyz"), ["x", "y", "z"]);
        assert_eq!(pieces(&m, ""), Vec::<String>::new());
    }

    #[test]
    fn repeated_pairs_keep_their_first_rank() {
        let lines: Vec<String> = ["b c", "a b", "b c"].iter().map(|s| s.to_string()).collect();
        let m = Merges::new(&lines);
        assert_eq!(pieces(&m, "abc"), ["a", "bc"]);
    }
}
