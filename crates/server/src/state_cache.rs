//! The conversation state cache: the sequence states of finished requests, keyed by the tokens
//! they consumed, so that a prompt extending an earlier request's tokens (the next turn of a
//! chat) continues from that state instead of prefilling them again.
//!
//! A hybrid model's state is small and of fixed size per GDN layer (plus the attention layers'
//! KV caches), so keeping it for many conversations is cheap. Entries are evicted least recently
//! used first when the byte budget is exceeded.

/// Kept states, least recently used evicted first, within a byte budget.
#[derive(Debug)]
pub struct StateCache<S> {
    budget: usize,
    used: usize,
    clock: u64,
    entries: Vec<Entry<S>>,
}

#[derive(Debug)]
struct Entry<S> {
    tokens: Vec<u32>,
    state: S,
    bytes: usize,
    last_used: u64,
}

impl<S> StateCache<S> {
    /// An empty cache holding at most `budget` bytes of states (0 disables it).
    pub fn new(budget: usize) -> Self {
        Self {
            budget,
            used: 0,
            clock: 0,
            entries: Vec::new(),
        }
    }

    /// Whether states are kept at all.
    pub fn enabled(&self) -> bool {
        self.budget > 0
    }

    /// The state whose tokens are the longest proper prefix of `prompt` (at least one prompt
    /// token is left to feed, whose logits choose the first new token), and how many tokens it
    /// covers.
    pub fn lookup(&mut self, prompt: &[u32]) -> Option<(&S, usize)> {
        let best = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.tokens.len() < prompt.len() && prompt.starts_with(&e.tokens))
            .max_by_key(|(_, e)| e.tokens.len())
            .map(|(i, _)| i)?;
        self.clock += 1;
        let entry = &mut self.entries[best];
        entry.last_used = self.clock;
        Some((&entry.state, entry.tokens.len()))
    }

    /// Keeps `state`, the state after consuming `tokens`, which takes `bytes`; evicts the least
    /// recently used entries to make room. A state larger than the whole budget is not kept.
    pub fn insert(&mut self, tokens: Vec<u32>, state: S, bytes: usize) {
        if bytes > self.budget || tokens.is_empty() {
            return;
        }
        if let Some(i) = self.entries.iter().position(|e| e.tokens == tokens) {
            let old = self.entries.swap_remove(i);
            self.used -= old.bytes;
        }
        while self.used + bytes > self.budget {
            let Some(oldest) = (0..self.entries.len()).min_by_key(|&i| self.entries[i].last_used)
            else {
                break;
            };
            let evicted = self.entries.swap_remove(oldest);
            self.used -= evicted.bytes;
        }
        self.clock += 1;
        self.used += bytes;
        self.entries.push(Entry {
            tokens,
            state,
            bytes,
            last_used: self.clock,
        });
    }

    /// Entries kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of the kept states.
    pub fn bytes(&self) -> usize {
        self.used
    }

    /// The byte budget.
    pub fn budget(&self) -> usize {
        self.budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_proper_prefix_wins() {
        let mut cache = StateCache::new(100);
        cache.insert(vec![1, 2], "ab", 10);
        cache.insert(vec![1, 2, 3], "abc", 10);
        cache.insert(vec![9], "z", 10);
        assert_eq!(cache.lookup(&[1, 2, 3, 4]), Some((&"abc", 3)));
        // The whole prompt cached leaves nothing to feed: the shorter prefix is used.
        assert_eq!(cache.lookup(&[1, 2, 3]), Some((&"ab", 2)));
        assert_eq!(cache.lookup(&[2, 3]), None);
    }

    #[test]
    fn evicts_least_recently_used_within_budget() {
        let mut cache = StateCache::new(25);
        cache.insert(vec![1], "a", 10);
        cache.insert(vec![2], "b", 10);
        assert!(cache.lookup(&[1, 0]).is_some()); // [1] is now the most recent
        cache.insert(vec![3], "c", 10);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.bytes(), 20);
        assert!(
            cache.lookup(&[2, 0]).is_none(),
            "the least recently used entry goes"
        );
        assert!(cache.lookup(&[1, 0]).is_some());
        assert!(cache.lookup(&[3, 0]).is_some());
    }

    #[test]
    fn same_tokens_replace_and_oversized_or_disabled_keep_nothing() {
        let mut cache = StateCache::new(25);
        cache.insert(vec![1], "a", 10);
        cache.insert(vec![1], "a2", 12);
        assert_eq!((cache.len(), cache.bytes()), (1, 12));
        cache.insert(vec![2], "huge", 26);
        assert_eq!(cache.len(), 1);
        let mut off = StateCache::new(0);
        off.insert(vec![1], "a", 1);
        assert!(off.is_empty() && !off.enabled());
    }
}
