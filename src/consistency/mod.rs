//! Read-your-writes tracking (commit LSNs, tokens, causal keys). Not built yet:
//! until it is, a session's reads after its writes may see replica lag.
