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
        self.join_database(name);
        self.coordinator
            .connect(name)
            .batch_execute("CREATE EXTENSION ai_agents")
            .expect("CREATE EXTENSION ai_agents on the coordinator");
    }

    /// Database `name` on every node with Citus, joined into one Citus database.
    fn join_database(&self, name: &str) {
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
    }

    /// A new database of this cluster with the extension distributed (4 shards), as tests written
    /// for one server use it: a connection to the coordinator, and the database's name.
    pub fn fresh_database(&self) -> (Client, String) {
        let _one_at_a_time = lock_nodes();
        let name = next_database_name();
        self.create_database(&name);
        let mut c = self.coordinator.connect(&name);
        c.batch_execute("SET client_min_messages = warning; SELECT ai_agents.distribute(4); RESET client_min_messages")
            .expect("ai_agents.distribute");
        (c, name)
    }

    /// A new database of this cluster with Citus but without ai_agents; its name.
    pub fn blank_database(&self) -> String {
        let _one_at_a_time = lock_nodes();
        let name = next_database_name();
        self.join_database(&name);
        name
    }

    /// Runs `sql` as the superuser in database `db` of every node, each node for itself (Citus
    /// would send it on from the coordinator, and refuses it on a worker).
    pub fn on_every_node(&self, db: &str, sql: &str) {
        for node in self.nodes() {
            node.connect(db)
                .batch_execute(&format!("SET citus.enable_ddl_propagation = off; {sql}"))
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        }
    }

    /// A member's session through the coordinator. Citus connects to a worker as the session's
    /// role and sends no session setting along, so a session-wide `request.jwt.claims` (what
    /// `crate::as_role` sets on one server) would not reach the workers' policies. Here a
    /// member logs in as a role of its own, a member of `role`, whose claims are its setting in
    /// `db` on every node. (PostgREST's way, claims set per transaction and forwarded by
    /// `forward_request_claims`, is tested in tests/tests/distributed.rs.) Without claims, or
    /// for another role: `authenticator` switched to `role`, which logs in on the workers.
    pub fn as_role(&self, db: &str, role: &str, claims: Option<&str>) -> Client {
        let conninfo = self.coordinator.conninfo(db);
        match claims {
            Some(claims) => {
                let _one_at_a_time = lock_nodes();
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(&(role, claims), &mut hasher);
                let member = format!("member_{:016x}", std::hash::Hasher::finish(&hasher));
                self.on_every_node(
                    "postgres",
                    &format!(
                        "DO $$ BEGIN
                             IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{member}') THEN
                                 CREATE ROLE {member} LOGIN IN ROLE {role};
                             END IF;
                         END $$;
                         ALTER ROLE {member} IN DATABASE {db} SET request.jwt.claims = '{}'",
                        claims.replace('\'', "''")
                    ),
                );
                Client::connect(
                    &conninfo.replace("user=postgres", &format!("user={member}")),
                    postgres::NoTls,
                )
                .expect("connect as a member")
            }
            None => {
                for worker in &self.workers {
                    worker
                        .connect("postgres")
                        .batch_execute(&format!("ALTER ROLE {role} LOGIN"))
                        .expect("the role logs in on the workers");
                }
                let mut c = Client::connect(
                    &conninfo.replace("user=postgres", "user=authenticator"),
                    postgres::NoTls,
                )
                .expect("connect as authenticator");
                c.batch_execute(&format!("SET ROLE {role}")).unwrap();
                c
            }
        }
    }

    /// The coordinator, then the workers.
    pub fn nodes(&self) -> impl Iterator<Item = &Cluster> {
        std::iter::once(&self.coordinator).chain(&self.workers)
    }

    /// The coordinator and the workers, for a caller that keeps them.
    pub fn into_nodes(self) -> (Cluster, Vec<Cluster>) {
        (self.coordinator, self.workers)
    }

    /// A connection to the coordinator.
    pub fn connect(&self) -> Client {
        self.coordinator.connect(DATABASE)
    }
}

fn next_database_name() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("d{}", NEXT.fetch_add(1, Ordering::SeqCst))
}

/// Held while a test changes what every node of the shared cluster holds (a database joined to
/// the cluster, a role): Citus copies roles to a node it adds, and two of those at once fail.
fn lock_nodes() -> std::sync::MutexGuard<'static, ()> {
    static NODES: std::sync::Mutex<()> = std::sync::Mutex::new(());
    NODES.lock().unwrap_or_else(|e| e.into_inner())
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
