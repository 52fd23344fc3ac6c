//! Bounded cache of classifications keyed by statement text.

use super::{classify, Decision};

/// Placeholder cache: classifies every time.
#[derive(Debug, Default)]
pub struct ClassifierCache {}

impl ClassifierCache {
    pub fn new(_capacity: usize) -> Self {
        Self {}
    }

    pub fn classify(&self, sql: &str) -> Decision {
        classify(sql)
    }
}
