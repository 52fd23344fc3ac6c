//! The router config that fronts a [`Cluster`]: used by `pgrouter demo` and the
//! integration tests, so both describe the cluster to the router the same way.

use super::{Cluster, NodeRole};
use crate::config::{Config, ConfigError, NodeConfig};

impl Cluster {
    /// The cluster's nodes as router config entries, primary first.
    pub fn router_nodes(&self) -> Vec<NodeConfig> {
        self.nodes()
            .into_iter()
            .map(|n| NodeConfig {
                name: Some(n.name.clone()),
                host: n.host.clone(),
                port: n.port,
                role: match n.role {
                    NodeRole::Primary => crate::config::NodeRole::Primary,
                    NodeRole::Replica => crate::config::NodeRole::Replica,
                },
                max_replica_lag: None,
                max_replica_lag_bytes: None,
                weight: 1,
            })
            .collect()
    }

    /// A config with the built-in defaults, the cluster's superuser as the one
    /// login (SCRAM-SHA-256 on both sides) and admin console user, the
    /// cluster's nodes, listening on `listen`.
    pub fn router_config(&self, listen: &str) -> Result<Config, ConfigError> {
        let template = format!(
            "listen = {listen:?}\n[[users]]\nname = {:?}\npassword = {:?}\n",
            self.superuser(),
            self.password()
        );
        let mut config = Config::parse_unvalidated(&template, "cluster router config")?;
        config.nodes = self.router_nodes();
        // The login is the cluster's superuser: it may use the admin console too.
        config.admin.users = vec![self.superuser().to_owned()];
        config.validate()?;
        Ok(config)
    }
}
