//! The admin console (SHOW POOLS, SHOW SERVERS, RELOAD ...). Not built yet: the
//! walking skeleton reports status through logs and `pgrouter demo`'s status line.
