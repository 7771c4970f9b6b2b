//! A Citus cluster on loopback: a coordinator and workers, each preloading citus and ai_agents,
//! joined in one database. Citus is in no package registry these machines reach: the first
//! cluster of a machine builds it from ../shared/vendor (scripts/citus, about 2 to 5 minutes),
//! every later one finds it installed.
use crate::Cluster;
use postgres::Client;
use std::path::Path;
use std::process::Command;
use std::sync::Once;

/// The database the nodes share (Citus connects to the same name on every node).
pub const DATABASE: &str = "gyms";

pub struct CitusCluster {
    pub coordinator: Cluster,
    pub workers: Vec<Cluster>,
}

fn install_citus() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/citus");
        let status = Command::new(&script)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(status.success(), "scripts/citus failed");
    });
}

impl CitusCluster {
    /// A coordinator and `workers` workers, the extension created on the coordinator (Citus
    /// creates it on the workers), not yet distributed.
    pub fn start(name: &str, workers: usize, settings: &[&str]) -> CitusCluster {
        install_citus();
        let mut all = vec![
            "shared_preload_libraries = 'citus, ai_agents'",
            "max_prepared_transactions = 100",
            "wal_level = logical",
            // No calls home from a machine without internet.
            "citus.enable_statistics_collection = off",
        ];
        all.extend_from_slice(settings);
        let coordinator = Cluster::start(&format!("{name}-coordinator"), &all);
        let workers: Vec<Cluster> = (0..workers)
            .map(|i| Cluster::start(&format!("{name}-worker{i}"), &all))
            .collect();
        for node in std::iter::once(&coordinator).chain(&workers) {
            node.connect("postgres")
                .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
                .expect("CREATE DATABASE");
            node.connect(DATABASE)
                .batch_execute(&format!(
                    "ALTER DATABASE {DATABASE} SET search_path = ai_agents, public;
                     CREATE EXTENSION citus"
                ))
                .expect("CREATE EXTENSION citus");
        }
        let mut c = coordinator.connect(DATABASE);
        c.execute(
            "SELECT citus_set_coordinator_host('127.0.0.1', $1)",
            &[&i32::from(coordinator.port())],
        )
        .expect("citus_set_coordinator_host");
        for worker in &workers {
            c.execute(
                "SELECT citus_add_node('127.0.0.1', $1)",
                &[&i32::from(worker.port())],
            )
            .expect("citus_add_node");
        }
        c.batch_execute("CREATE EXTENSION ai_agents")
            .expect("CREATE EXTENSION ai_agents on the coordinator");
        CitusCluster {
            coordinator,
            workers,
        }
    }

    /// A connection to the coordinator.
    pub fn connect(&self) -> Client {
        self.coordinator.connect(DATABASE)
    }
}
