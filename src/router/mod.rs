//! Statement classification: decides where a statement may run and what it does
//! to the session. Pure and synchronous: no I/O, no shared mutable state except
//! the classification cache. It must not know about connections or sockets.

mod cache;

pub use cache::ClassifierCache;

/// Where a statement may run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Route {
    /// Safe on any replica that satisfies the session's freshness needs.
    Replica,
    /// Must run on the primary (writes, and everything we are not sure of).
    Primary,
}

/// What a statement does to the transaction state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxEffect {
    None,
    /// BEGIN / START TRANSACTION; `read_only` when it says READ ONLY.
    Begin { read_only: bool },
    /// COMMIT / END / ROLLBACK / ABORT / PREPARE TRANSACTION ...
    End,
}

/// What a statement does to the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SessionEffect {
    None,
    /// SET / RESET / DISCARD and the like: must be in effect on every node the
    /// session uses afterwards, so the front end replays it on other nodes.
    SetsState,
    /// The session must stay on the primary from now on (temp tables, LISTEN, ...).
    PinPrimary,
}

/// The classifier's verdict for one statement text (which may hold several statements).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    pub route: Route,
    /// Why: a short static reason for logs and the admin console.
    pub reason: &'static str,
    pub tx: TxEffect,
    pub session: SessionEffect,
}

/// Classifies one statement text (simple Query or Parse). Never fails: anything
/// it cannot parse or does not recognise goes to the primary.
pub fn classify(sql: &str) -> Decision {
    let trimmed = sql.trim_start().to_ascii_lowercase();
    let route = if trimmed.starts_with("select") && !trimmed.contains("for update") {
        Route::Replica
    } else {
        Route::Primary
    };
    Decision {
        route,
        reason: "placeholder",
        tx: TxEffect::None,
        session: SessionEffect::None,
    }
}
