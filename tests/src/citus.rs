//! A Citus cluster on loopback: a coordinator and workers, each preloading citus and ai_agents,
//! joined in one database. Citus is in no package registry these machines reach: the first
//! cluster of a machine builds it from ../shared/vendor (scripts/citus, about 2 to 5 minutes),
//! every later one finds it installed.
use crate::Cluster;
use postgres::Client;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Once, OnceLock};

/// The database the nodes share (Citus connects to the same name on every node).
pub const DATABASE: &str = "gyms";

pub struct CitusCluster {
    pub coordinator: Cluster,
    pub workers: Vec<Cluster>,
    name: String,
    settings: Vec<String>,
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
        let cluster = CitusCluster {
            coordinator,
            workers,
            name: name.to_string(),
            settings: all.iter().map(|s| s.to_string()).collect(),
        };
        cluster.create_database(DATABASE);
        cluster
    }

    /// One more worker with the same settings, in DATABASE with Citus created, added to the
    /// cluster (citus_add_node) as docs/distributed.md#adding-a-node says; it holds no shards
    /// until a rebalance moves some to it.
    pub fn add_worker(&mut self) -> &Cluster {
        let settings: Vec<&str> = self.settings.iter().map(String::as_str).collect();
        let name = format!("{}-worker{}", self.name, self.workers.len());
        let node = Cluster::start(&name, &settings);
        node.connect("postgres")
            .batch_execute(&format!("CREATE DATABASE {DATABASE}"))
            .expect("CREATE DATABASE");
        node.connect(DATABASE)
            .batch_execute(&format!(
                "ALTER DATABASE {DATABASE} SET search_path = ai_agents, public; CREATE EXTENSION citus"
            ))
            .expect("CREATE EXTENSION citus");
        self.connect()
            .execute(
                "SELECT citus_add_node('127.0.0.1', $1)",
                &[&i32::from(node.port())],
            )
            .expect("citus_add_node");
        self.workers.push(node);
        self.workers.last().expect("the worker just added")
    }

    /// Database `name` on every node, joined into one Citus database, with the extension created
    /// on the coordinator (Citus creates it on the workers), not yet distributed.
    fn create_database(&self, name: &str) {
        for node in self.nodes() {
            node.connect("postgres")
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .expect("CREATE DATABASE");
            node.connect(name)
                .batch_execute(&format!(
                    "ALTER DATABASE {name} SET search_path = ai_agents, public;
                     CREATE EXTENSION citus"
                ))
                .expect("CREATE EXTENSION citus");
        }
        let mut c = self.coordinator.connect(name);
        c.execute(
            "SELECT citus_set_coordinator_host('127.0.0.1', $1)",
            &[&i32::from(self.coordinator.port())],
        )
        .expect("citus_set_coordinator_host");
        for worker in &self.workers {
            c.execute(
                "SELECT citus_add_node('127.0.0.1', $1)",
                &[&i32::from(worker.port())],
            )
            .expect("citus_add_node");
        }
        c.batch_execute("CREATE EXTENSION ai_agents")
            .expect("CREATE EXTENSION ai_agents on the coordinator");
    }

    /// A new database of this cluster with the extension distributed (4 shards), as tests written
    /// for one server use it: a connection to the coordinator, and the database's name.
    pub fn fresh_database(&self) -> (Client, String) {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!("d{}", NEXT.fetch_add(1, Ordering::SeqCst));
        self.create_database(&name);
        let mut c = self.coordinator.connect(&name);
        c.batch_execute("SET client_min_messages = warning; SELECT ai_agents.distribute(4); RESET client_min_messages")
            .expect("ai_agents.distribute");
        (c, name)
    }

    fn nodes(&self) -> impl Iterator<Item = &Cluster> {
        std::iter::once(&self.coordinator).chain(&self.workers)
    }

    /// A connection to the coordinator.
    pub fn connect(&self) -> Client {
        self.coordinator.connect(DATABASE)
    }
}

/// The Citus cluster shared by the tests of one binary that run against a coordinator
/// (`AI_AGENTS_TEST_TARGET=citus`, see `crate::fresh_database`); stopped when the binary exits.
pub fn shared() -> &'static CitusCluster {
    static SHARED: OnceLock<CitusCluster> = OnceLock::new();
    let mut started = false;
    let cluster = SHARED.get_or_init(|| {
        started = true;
        CitusCluster::start(
            "shared-citus",
            2,
            &["ai_agents.rate_limit_global_per_minute = 1000000"],
        )
    });
    if started {
        cluster.nodes().for_each(crate::stop_at_exit);
    }
    cluster
}
