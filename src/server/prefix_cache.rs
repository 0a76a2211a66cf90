//! Reuse of computed prefixes: entries map a token sequence to its KV cache; a request is
//! served from the entry sharing the longest common prefix with its prompt, so a consult on
//! a growing conversation computes only the tokens added since the last one. Memory is
//! bounded by a byte budget with least-recently-used eviction. Entries carry the salt of the
//! requests that made them (vLLM's `cache_salt`): a request reuses only its own salt's.

/// What the cache needs to know about a stored value.
pub trait Weigh {
    fn bytes(&self) -> usize;
}

impl Weigh for crate::model::decoder::KvCache {
    fn bytes(&self) -> usize {
        crate::model::decoder::KvCache::bytes(self)
    }
}

struct Entry<T> {
    salt: String,
    tokens: Vec<u32>,
    value: T,
    bytes: usize,
    last_used: u64,
}

pub struct PrefixCache<T> {
    entries: Vec<Entry<T>>,
    capacity_bytes: usize,
    used_bytes: usize,
    clock: u64,
}

/// Counters for /health and the benchmark.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PrefixCacheStats {
    pub entries: usize,
    pub bytes: usize,
    pub capacity_bytes: usize,
}

impl<T: Weigh> PrefixCache<T> {
    pub fn new(capacity_bytes: usize) -> Self {
        Self { entries: Vec::new(), capacity_bytes, used_bytes: 0, clock: 0 }
    }

    /// The entry sharing the longest common prefix with `prompt`, and that prefix's length
    /// (0 when nothing matches). The entry counts as used.
    pub fn lookup(&mut self, salt: &str, prompt: &[u32]) -> Option<(usize, &T)> {
        let (index, common) = self.best_match(salt, prompt)?;
        self.clock += 1;
        let entry = &mut self.entries[index];
        entry.last_used = self.clock;
        Some((common, &entry.value))
    }

    /// Removes the entry whose tokens are the longest prefix of `prompt`, when no other entry
    /// shares more of it, and returns the entry's value to be extended in place: the request
    /// that extends it stores a longer one, which would replace this one anyway. A session's
    /// next consult is served this way without copying its cache. `None` when the best match
    /// is only partial (see `lookup`).
    pub fn take_extended(&mut self, salt: &str, prompt: &[u32]) -> Option<(usize, T)> {
        let (index, common) = self.best_match(salt, prompt)?;
        if common != self.entries[index].tokens.len() {
            return None;
        }
        let entry = self.entries.swap_remove(index);
        self.used_bytes -= entry.bytes;
        Some((common, entry.value))
    }

    /// Stores `value` as the KV cache of `tokens`. Entries whose tokens are a prefix of
    /// `tokens` are dropped (any prompt they match, this one matches at least as far), then
    /// the least recently used entries go until the budget holds. A value larger than the
    /// whole budget is not stored.
    pub fn insert(&mut self, salt: &str, tokens: Vec<u32>, value: T) {
        let bytes = value.bytes();
        if tokens.is_empty() || bytes > self.capacity_bytes {
            return;
        }
        let before = self.entries.len();
        self.entries.retain(|e| e.salt != salt || !tokens.starts_with(&e.tokens));
        if self.entries.len() != before {
            self.used_bytes = self.entries.iter().map(|e| e.bytes).sum();
        }
        self.evict_to(self.capacity_bytes - bytes);
        self.clock += 1;
        self.used_bytes += bytes;
        self.entries.push(Entry { salt: salt.to_string(), tokens, value, bytes, last_used: self.clock });
    }

    /// A new budget; least recently used entries go until it holds. The server shrinks it
    /// while running requests need the memory of a shared KV budget.
    pub fn set_capacity(&mut self, capacity_bytes: usize) {
        self.capacity_bytes = capacity_bytes;
        self.evict_to(capacity_bytes);
    }

    fn evict_to(&mut self, bytes: usize) {
        while self.used_bytes > bytes {
            let oldest = self.entries.iter().enumerate().min_by_key(|(_, e)| e.last_used).map(|(i, _)| i).expect("over budget implies entries");
            self.used_bytes -= self.entries.swap_remove(oldest).bytes;
        }
    }

    /// The entry sharing the longest common prefix with `prompt` (at least one token), and
    /// that prefix's length.
    fn best_match(&self, salt: &str, prompt: &[u32]) -> Option<(usize, usize)> {
        let (index, common) =
            self.entries.iter().enumerate().filter(|(_, e)| e.salt == salt).map(|(i, e)| (i, common_prefix(&e.tokens, prompt))).max_by_key(|&(_, c)| c)?;
        (common > 0).then_some((index, common))
    }

    pub fn stats(&self) -> PrefixCacheStats {
        PrefixCacheStats { entries: self.entries.len(), bytes: self.used_bytes, capacity_bytes: self.capacity_bytes }
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value that weighs one byte per token, like a KV cache.
    #[derive(Debug, PartialEq)]
    struct Kv(usize);
    impl Weigh for Kv {
        fn bytes(&self) -> usize {
            self.0
        }
    }

    fn insert(c: &mut PrefixCache<Kv>, tokens: &[u32]) {
        c.insert("", tokens.to_vec(), Kv(tokens.len()));
    }

    #[test]
    fn longest_common_prefix_wins() {
        let mut c = PrefixCache::new(100);
        insert(&mut c, &[1, 2, 3]);
        insert(&mut c, &[1, 2, 9, 9, 9]);
        assert_eq!(c.lookup("", &[1, 2, 3, 4]), Some((3, &Kv(3))));
        assert_eq!(c.lookup("", &[1, 2, 9, 8]), Some((3, &Kv(5))));
        assert_eq!(c.lookup("", &[1, 5]).map(|(n, _)| n), Some(1));
        assert_eq!(c.lookup("", &[7]), None);
        assert_eq!(c.lookup("", &[]), None);
    }

    #[test]
    fn a_whole_entry_is_taken_a_partial_match_is_not() {
        let mut c = PrefixCache::new(100);
        insert(&mut c, &[1, 2, 3]);
        insert(&mut c, &[1, 2, 9, 9, 9]);
        // [1, 2, 9, 9] shares 4 tokens with the second entry, but not all of it: not taken.
        assert_eq!(c.take_extended("", &[1, 2, 9, 9]), None);
        assert_eq!(c.take_extended("", &[1, 2, 3, 4]), Some((3, Kv(3))));
        assert_eq!(c.stats().entries, 1);
        assert_eq!(c.stats().bytes, 5);
        assert_eq!(c.lookup("", &[1, 2, 3]).map(|(n, _)| n), Some(2), "taken: only the other entry is left");
        assert_eq!(c.take_extended("", &[7]), None);
    }

    #[test]
    fn an_extension_replaces_its_prefixes() {
        let mut c = PrefixCache::new(100);
        insert(&mut c, &[1, 2]);
        insert(&mut c, &[1, 2, 3]);
        insert(&mut c, &[1, 2, 3, 4]);
        assert_eq!(c.stats().entries, 1);
        assert_eq!(c.stats().bytes, 4);
        // Not a prefix: kept.
        insert(&mut c, &[1, 2, 5]);
        assert_eq!(c.stats().entries, 2);
    }

    #[test]
    fn least_recently_used_goes_first_and_the_budget_holds() {
        let mut c = PrefixCache::new(10);
        insert(&mut c, &[1, 1, 1, 1]);
        insert(&mut c, &[2, 2, 2, 2]);
        c.lookup("", &[1]); // 1s are now more recent than 2s
        insert(&mut c, &[3, 3, 3, 3]);
        assert_eq!(c.stats().bytes, 8);
        assert!(c.lookup("", &[2]).is_none());
        assert!(c.lookup("", &[1]).is_some());
        assert!(c.lookup("", &[3]).is_some());
        // Larger than the whole budget: not stored, nothing evicted.
        c.insert("", vec![4; 11], Kv(11));
        assert_eq!(c.stats().entries, 2);
        assert!(c.stats().bytes <= c.stats().capacity_bytes);
    }

    #[test]
    fn a_smaller_capacity_evicts_the_least_recently_used_at_once() {
        let mut c = PrefixCache::new(10);
        insert(&mut c, &[1, 1, 1, 1]);
        insert(&mut c, &[2, 2, 2, 2]);
        c.lookup("", &[1]);
        c.set_capacity(5);
        assert_eq!((c.stats().entries, c.stats().bytes, c.stats().capacity_bytes), (1, 4, 5));
        assert!(c.lookup("", &[1]).is_some());
        c.set_capacity(0);
        assert_eq!(c.stats().bytes, 0);
    }

    #[test]
    fn a_salt_sees_only_its_own_prefixes() {
        let mut c = PrefixCache::new(1000);
        c.insert("a", vec![1, 2, 3], Kv(3));
        assert_eq!(c.lookup("b", &[1, 2, 3, 4]), None);
        assert_eq!(c.take_extended("", &[1, 2, 3, 4]), None);
        // A longer prefix of another salt does not replace this one.
        c.insert("b", vec![1, 2, 3, 4], Kv(4));
        assert_eq!(c.lookup("a", &[1, 2, 3, 4]), Some((3, &Kv(3))));
        assert_eq!(c.take_extended("b", &[1, 2, 3, 4, 5]), Some((4, Kv(4))));
    }
}
