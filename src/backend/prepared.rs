//! The named prepared statements that exist on one server connection, with the
//! order of their last use so that the least recently used of pgrouter's own
//! (`pgr_...`, transaction pooling) can be closed when a connection holds too
//! many. Bookkeeping only: sending Parse/Close is the session's job.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub struct PreparedSet {
    /// name → (hash of the Parse that created it, tick of its last use).
    statements: HashMap<String, (u64, u64)>,
    tick: u64,
    /// How many names start with [`EVICTABLE_PREFIX`], kept so that the check
    /// after every message that may prepare is O(1) below the limit.
    evictable: usize,
}

/// pgrouter's own server-side names (transaction pooling): the only ones it
/// may close on its own, because it can prepare them again whenever needed.
pub const EVICTABLE_PREFIX: &str = "pgr_";

impl PreparedSet {
    /// The hash of the Parse that created `name` here, if it exists.
    pub fn get(&self, name: &str) -> Option<&u64> {
        self.statements.get(name).map(|(hash, _)| hash)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.statements.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.statements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    pub fn insert(&mut self, name: String, hash: u64) {
        self.tick += 1;
        let evictable = name.starts_with(EVICTABLE_PREFIX);
        if self.statements.insert(name, (hash, self.tick)).is_none() && evictable {
            self.evictable += 1;
        }
    }

    /// Marks `name` as just used.
    pub fn touch(&mut self, name: &str) {
        self.tick += 1;
        if let Some((_, used)) = self.statements.get_mut(name) {
            *used = self.tick;
        }
    }

    pub fn remove(&mut self, name: &str) {
        if self.statements.remove(name).is_some() && name.starts_with(EVICTABLE_PREFIX) {
            self.evictable -= 1;
        }
    }

    pub fn clear(&mut self) {
        self.statements.clear();
        self.evictable = 0;
    }

    /// With more than `limit` of pgrouter's own statements, the least recently
    /// used of them: the one to close. A name the client chose (session
    /// pooling) must stay until it closes it.
    pub fn over_limit(&self, limit: usize) -> Option<String> {
        if limit == 0 || self.evictable <= limit {
            return None;
        }
        self.statements
            .iter()
            .filter(|(name, _)| name.starts_with(EVICTABLE_PREFIX))
            .min_by_key(|(_, (_, used))| *used)
            .map(|(name, _)| name.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::PreparedSet;

    #[test]
    fn the_least_recently_used_of_our_names_goes_first() {
        let mut set = PreparedSet::default();
        set.insert("pgr_a".into(), 1);
        set.insert("client_s1".into(), 2);
        set.insert("pgr_b".into(), 3);
        set.insert("pgr_c".into(), 4);
        assert_eq!(set.over_limit(3), None);
        set.touch("pgr_a");
        set.insert("pgr_d".into(), 5);
        // pgr_b is now the oldest use; the client's own name never qualifies.
        assert_eq!(set.over_limit(3).as_deref(), Some("pgr_b"));
        assert_eq!(set.over_limit(0), None, "0 means no limit");
        set.remove("pgr_b");
        set.remove("pgr_b");
        assert_eq!(set.over_limit(3), None);
        set.insert("pgr_a".into(), 6); // replaced, not added
        assert_eq!(set.over_limit(3), None);
        set.insert("pgr_e".into(), 7);
        assert_eq!(set.over_limit(3).as_deref(), Some("pgr_c"));
        assert_eq!(set.get("pgr_d"), Some(&5));
        set.clear();
        assert_eq!(set.over_limit(1), None);
        assert!(set.is_empty());
    }
}
