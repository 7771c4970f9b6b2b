//! A PostgreSQL cluster owned by the tests: initdb into /tmp, a free loopback port, the
//! extension preloaded, one fresh database per test. Runs as the `postgres` user when the
//! tests run as root (Postgres refuses to run as root).
//!
//! The extension must be installed in the system directories first (`cargo pgrx install`);
//! `scripts/test` does that.
use postgres::{Client, NoTls};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Once, OnceLock};

pub use postgres;
pub mod citus;
pub mod stub;

const DEFAULT_BINDIR: &str = "/usr/lib/postgresql/15/bin";
const TEMPLATE_DB: &str = "ai_agents_template";

pub struct Cluster {
    datadir: PathBuf,
    port: u16,
    bindir: PathBuf,
    next_db: AtomicU32,
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Runs a Postgres program, as the postgres user when we are root, and panics on failure.
fn run_pg(program: &Path, args: &[&str]) -> Output {
    let mut command = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let output = command
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    assert!(
        output.status.success(),
        "{} {:?} failed: {}{}",
        program.display(),
        args,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// A data directory for a cluster of this test process, cleared of any leftover.
fn fresh_datadir(name: &str) -> PathBuf {
    let datadir = std::env::temp_dir().join(format!("ai_agents_it-{name}-{}", std::process::id()));
    if datadir.exists() {
        std::fs::remove_dir_all(&datadir).expect("cannot remove a stale data directory");
    }
    datadir
}

/// Appends `base` and then `settings` (later lines win) to a cluster's postgresql.conf, which
/// belongs to the postgres user: written through a program running as it.
fn append_conf(datadir: &Path, base: &str, settings: &[&str]) {
    let mut conf = base.to_string();
    for line in settings {
        conf.push_str(line);
        conf.push('\n');
    }
    let conf_path = datadir.join("postgresql.conf");
    let append = format!("cat >> '{}' <<'EOF'\n{conf}EOF\n", conf_path.display());
    run_pg(Path::new("/bin/sh"), &["-c", &append]);
}

impl Cluster {
    /// initdb and start a new cluster; `settings` are extra postgresql.conf lines.
    pub fn start(name: &str, settings: &[&str]) -> Cluster {
        let bindir = PathBuf::from(
            std::env::var("AI_AGENTS_PG_BINDIR").unwrap_or_else(|_| DEFAULT_BINDIR.into()),
        );
        let datadir = fresh_datadir(name);
        let datadir_str = datadir.to_str().expect("temp dir is not UTF-8").to_string();
        run_pg(
            &bindir.join("initdb"),
            &[
                "-D",
                &datadir_str,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        );
        let port = free_port();
        append_conf(
            &datadir,
            &format!(
                "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n\
             shared_preload_libraries = 'ai_agents'\nfsync = off\nsynchronous_commit = off\n\
             full_page_writes = off\nmax_connections = 200\nlog_min_messages = warning\n"
            ),
            settings,
        );
        let cluster = Cluster {
            datadir,
            port,
            bindir,
            next_db: AtomicU32::new(0),
        };
        cluster.pg_ctl(&["start", "-w", "-t", "60"]);
        let mut admin = cluster.connect("postgres");
        for statement in [
            format!("CREATE DATABASE {TEMPLATE_DB}"),
            format!("ALTER DATABASE {TEMPLATE_DB} SET search_path = ai_agents, public"),
        ] {
            admin
                .batch_execute(&statement)
                .expect("cannot create the template database");
        }
        cluster
            .connect(TEMPLATE_DB)
            .batch_execute("CREATE EXTENSION ai_agents")
            .expect("CREATE EXTENSION ai_agents failed: is the extension installed?");
        cluster
    }

    /// A streaming standby of `primary` (pg_basebackup -R), started, with extra settings.
    pub fn standby_of(primary: &Cluster, name: &str, settings: &[&str]) -> Cluster {
        let datadir = fresh_datadir(name);
        let datadir_str = datadir.to_str().expect("temp dir is not UTF-8").to_string();
        let primary_port = primary.port.to_string();
        run_pg(
            &primary.bindir.join("pg_basebackup"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary_port,
                "-U",
                "postgres",
                "-D",
                &datadir_str,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
            ],
        );
        let port = free_port();
        append_conf(&datadir, &format!("\nport = {port}\n"), settings);
        let standby = Cluster {
            datadir,
            port,
            bindir: primary.bindir.clone(),
            next_db: AtomicU32::new(1000),
        };
        standby.pg_ctl(&["start", "-w", "-t", "60"]);
        standby
    }

    pub fn pg_ctl(&self, args: &[&str]) {
        let log = self.log_path();
        let mut all = vec![
            "-D",
            self.datadir.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        run_pg(&self.bindir.join("pg_ctl"), &all);
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.datadir.join("server.log")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn conninfo(&self, database: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={database}",
            self.port
        )
    }

    pub fn connect(&self, database: &str) -> Client {
        Client::connect(&self.conninfo(database), NoTls)
            .unwrap_or_else(|e| panic!("cannot connect to {database}: {e}"))
    }

    /// A new database with the extension installed (copied from a template) and
    /// search_path = ai_agents, public, as the deployment guide's SQL expects.
    pub fn create_database(&self) -> String {
        let name = format!("t{}", self.next_db.fetch_add(1, Ordering::SeqCst));
        let mut admin = self.connect("postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE_DB}"))
            .expect("cannot create a test database");
        admin
            .batch_execute(&format!(
                "ALTER DATABASE {name} SET search_path = ai_agents, public"
            ))
            .expect("cannot set search_path");
        name
    }

    /// An empty database (from template0), for restoring dumps into.
    pub fn create_blank_database(&self) -> String {
        let name = format!("t{}", self.next_db.fetch_add(1, Ordering::SeqCst));
        self.connect("postgres")
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
            .expect("cannot create a blank database");
        name
    }

    /// Runs a client program of this Postgres installation (pg_dump, psql) against a database.
    pub fn client_program(&self, program: &str, database: &str, args: &[&str]) -> Output {
        let output = Command::new(self.bindir.join(program))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// A connection to a new database of this cluster, and the database's name.
    pub fn fresh_database(&self) -> (Client, String) {
        let name = self.create_database();
        (self.connect(&name), name)
    }

    pub fn stop(&self) {
        self.pg_ctl(&["stop", "-m", "immediate", "-w"]);
        let _ = std::fs::remove_dir_all(&self.datadir);
    }
}

/// A cluster whose start fails half-way is stopped on the way out too.
impl Drop for Cluster {
    fn drop(&mut self) {
        if self.datadir.join("postmaster.pid").exists() {
            self.stop();
        }
    }
}

/// Stops `cluster` when the test binary exits (for clusters kept in statics).
pub fn stop_at_exit(cluster: &'static Cluster) {
    static REGISTERED: std::sync::Mutex<Vec<&'static Cluster>> = std::sync::Mutex::new(Vec::new());
    extern "C" fn stop_registered() {
        if let Ok(clusters) = REGISTERED.lock() {
            clusters.iter().for_each(|c| c.stop());
        }
    }
    let mut clusters = REGISTERED.lock().unwrap_or_else(|e| e.into_inner());
    if clusters.is_empty() {
        // SAFETY: registering a plain extern "C" function.
        unsafe { libc::atexit(stop_registered) };
    }
    clusters.push(cluster);
}

static SHARED: OnceLock<Cluster> = OnceLock::new();

/// The cluster shared by all tests of one test binary; stopped when the binary exits.
pub fn shared_cluster() -> &'static Cluster {
    let mut started = false;
    let cluster = SHARED.get_or_init(|| {
        started = true;
        // Tests share the server-wide global tier; only the rate-limit tests, on clusters of
        // their own, run with the default 400 per minute.
        Cluster::start(
            "shared",
            &["ai_agents.rate_limit_global_per_minute = 1000000"],
        )
    });
    if started {
        stop_at_exit(cluster);
    }
    cluster
}

/// A connection to a fresh database of the shared cluster, and the database's name. With
/// `AI_AGENTS_TEST_TARGET=citus`, a database of the shared Citus cluster, distributed, and a
/// connection to its coordinator: the tests that take their database here run against either.
pub fn fresh_database() -> (Client, String) {
    if on_citus() {
        citus::shared().fresh_database()
    } else {
        shared_cluster().fresh_database()
    }
}

/// Whether the tests run against a Citus coordinator (`AI_AGENTS_TEST_TARGET=citus`).
pub fn on_citus() -> bool {
    std::env::var("AI_AGENTS_TEST_TARGET").is_ok_and(|t| t == "citus")
}

/// Creates an organization's agent and returns (organization_id, agent_id) as text.
pub fn create_agent(client: &mut Client, name: &str) -> (String, String) {
    let row = client
        .query_one(
            "INSERT INTO ai_agents.ai_agents (organization_id, name, agent_type, system_prompt, model) \
             VALUES (gen_random_uuid(), $1, 'customer_care', 'You help gym members.', 'gpt-4o-mini') \
             RETURNING organization_id::text, id::text",
            &[&name],
        )
        .expect("cannot create an agent");
    (row.get(0), row.get(1))
}

/// Starts a conversation with an agent; returns its id.
pub fn start_conversation(client: &mut Client, agent: &str) -> String {
    client
        .query_one(
            "SELECT (ai_agents.start_conversation($1::text::uuid)).id::text",
            &[&agent],
        )
        .expect("cannot start a conversation")
        .get(0)
}

/// Enqueues a task for an agent; returns the task's id.
pub fn enqueue(client: &mut Client, agent: &str, title: &str) -> String {
    client
        .query_one(
            "SELECT id::text FROM ai_agents.enqueue_task($1::text::uuid, $2)",
            &[&agent, &title],
        )
        .expect("cannot enqueue a task")
        .get(0)
}

/// The first column of every row of a query, as text.
pub fn strings(c: &mut Client, sql: &str) -> Vec<String> {
    c.query(sql, &[])
        .expect(sql)
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The SQLSTATE and message of a statement that must fail.
pub fn error_of(client: &mut Client, sql: &str) -> (String, String) {
    match client.batch_execute(sql) {
        Ok(()) => panic!("expected an error from: {sql}"),
        Err(e) => {
            let db = e
                .as_db_error()
                .unwrap_or_else(|| panic!("not a database error: {e}"));
            (db.code().code().to_string(), db.message().to_string())
        }
    }
}

/// A cluster whose background worker serves its `postgres` database (with the extension
/// installed), pointed at an LLM stub for both providers.
pub struct WorkerEnv {
    /// The server the tests connect to; with `AI_AGENTS_TEST_TARGET=citus`, the coordinator of a
    /// Citus cluster whose tables are distributed.
    pub cluster: Cluster,
    /// The Citus workers (none on one server), each running the extension's worker too.
    pub workers: Vec<Cluster>,
    pub stub: stub::Stub,
    database: &'static str,
}

/// Recognisable, so tests can look for it everywhere it must not be.
pub const PLANTED_KEY: &str = "sk-planted-4f9a1c77e2b04d6e";

impl WorkerEnv {
    /// Starts the stub and the cluster; `settings` are extra postgresql.conf lines.
    pub fn start(name: &str, settings: &[&str]) -> WorkerEnv {
        let stub = stub::Stub::start();
        let mut all = vec![
            format!("ai_agents.openai_base_url = '{}'", stub.base_url),
            format!("ai_agents.anthropic_base_url = '{}'", stub.base_url),
            format!("ai_agents.allowed_base_urls = '{}'", stub.base_url),
            format!("ai_agents.openai_api_key = '{PLANTED_KEY}'"),
            "ai_agents.retry_base_delay = 1".into(),
            "ai_agents.http_timeout = 5".into(),
            "ai_agents.rate_limit_global_per_minute = 1000000".into(),
            "ai_agents.rate_limit_agent_per_minute = 1000000".into(),
            "ai_agents.rate_limit_organization_per_minute = 1000000".into(),
            "log_min_messages = info".into(),
        ];
        all.extend(settings.iter().map(|s| s.to_string()));
        if on_citus() {
            all.push(format!("ai_agents.database = '{}'", citus::DATABASE));
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            let nodes = citus::CitusCluster::start(name, 2, &all);
            nodes
                .connect()
                .batch_execute("SET client_min_messages = warning; SELECT ai_agents.distribute(4)")
                .expect("ai_agents.distribute");
            let (cluster, workers) = nodes.into_nodes();
            return WorkerEnv {
                cluster,
                workers,
                stub,
                database: citus::DATABASE,
            };
        }
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let cluster = Cluster::start(name, &all);
        cluster
            .connect("postgres")
            .batch_execute("CREATE EXTENSION ai_agents")
            .expect("CREATE EXTENSION in the worker's database");
        WorkerEnv {
            cluster,
            workers: vec![],
            stub,
            database: "postgres",
        }
    }

    /// Every server of the environment: the one the tests connect to, then the Citus workers.
    pub fn nodes(&self) -> impl Iterator<Item = &Cluster> {
        std::iter::once(&self.cluster).chain(&self.workers)
    }

    /// The database the extension's worker runs in.
    pub fn database(&self) -> &'static str {
        self.database
    }

    /// The cluster kept in `cell` for a test binary: started on first use, stopped when the
    /// binary exits.
    pub fn kept(
        cell: &'static OnceLock<WorkerEnv>,
        name: &str,
        settings: &[&str],
    ) -> &'static WorkerEnv {
        let mut started = false;
        let env = cell.get_or_init(|| {
            started = true;
            WorkerEnv::start(name, settings)
        });
        if started {
            env.nodes().for_each(stop_at_exit);
        }
        env
    }

    /// A connection once the cluster answers again after Postgres restarted it (a SIGKILL of
    /// any backend makes the postmaster restart all of them); panics after `limit`.
    pub fn reconnect(&self, limit: std::time::Duration) -> Client {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Ok(mut c) = Client::connect(&self.cluster.conninfo(self.database), NoTls) {
                if c.batch_execute("SET search_path = ai_agents, public")
                    .is_ok()
                {
                    return c;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the cluster did not come back"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// A connection to the worker's database with the guide's search_path.
    pub fn connect(&self) -> Client {
        let mut c = self.cluster.connect(self.database);
        c.batch_execute("SET search_path = ai_agents, public")
            .expect("search_path");
        c
    }
}

/// Polls `condition` (a SQL boolean over the task's row) until it holds; returns how long it
/// took, and panics after `limit`.
pub fn wait_for(
    c: &mut Client,
    task: &str,
    condition: &str,
    limit: std::time::Duration,
) -> std::time::Duration {
    let started = std::time::Instant::now();
    loop {
        let done: bool = c
            .query_one(
                &format!(
                    "SELECT ({condition}) FROM ai_agents.ai_agent_tasks WHERE id = $1::text::uuid"
                ),
                &[&task],
            )
            .expect("polling a task")
            .get(0);
        if done {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "task {task}: '{condition}' not reached within {limit:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Sleeps past the next `minutes`-minute slot of the wall clock when it is less than `margin`
/// away, for tests that run a recurring task of the guide (`*/10`) with the worker: a slot
/// passing mid-test would run the task a second time, at whatever hour the suite runs.
pub fn clear_of_slot(minutes: u64, margin: std::time::Duration) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970");
    let slot = std::time::Duration::from_secs(minutes * 60);
    let into = std::time::Duration::from_nanos((now.as_nanos() % slot.as_nanos()) as u64);
    let left = slot - into;
    if left < margin {
        std::thread::sleep(left + std::time::Duration::from_millis(100));
    }
}

const SUPABASE_ROLES: &str = "CREATE ROLE anon NOLOGIN; CREATE ROLE authenticated NOLOGIN;
     CREATE ROLE service_role NOLOGIN BYPASSRLS;
     CREATE ROLE authenticator LOGIN NOINHERIT;
     GRANT anon, authenticated, service_role TO authenticator;
     CREATE ROLE nobody NOLOGIN;";

/// Supabase's roles in the shared cluster (with `AI_AGENTS_TEST_TARGET=citus`, on every node of
/// the shared Citus cluster), as Supabase creates them: PostgREST logs in as `authenticator`
/// and switches to `anon`, `authenticated` or `service_role` (which bypasses RLS) per request.
/// Databases created before need `apply_role_grants()`.
pub fn supabase_roles() {
    static ROLES: Once = Once::new();
    ROLES.call_once(|| {
        if on_citus() {
            citus::shared().on_every_node("postgres", SUPABASE_ROLES);
        } else {
            shared_cluster()
                .connect("postgres")
                .batch_execute(SUPABASE_ROLES)
                .expect("roles");
        }
    });
}

/// Runs `sql` as the superuser in database `db` of the shared cluster, or of every node of the
/// shared Citus cluster with `AI_AGENTS_TEST_TARGET=citus`: for settings each node reads.
pub fn on_every_node(db: &str, sql: &str) {
    if on_citus() {
        citus::shared().on_every_node(db, sql);
    } else {
        shared_cluster()
            .connect(db)
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// A PostgREST-like session on the shared cluster: `authenticator` switched to `role`, with
/// the JWT claims set. With `AI_AGENTS_TEST_TARGET=citus`, a session on the shared Citus
/// cluster's coordinator (`citus::CitusCluster::as_role`).
pub fn as_role(db: &str, role: &str, claims: Option<&str>) -> Client {
    if on_citus() {
        return citus::shared().as_role(db, role, claims);
    }
    let conninfo = shared_cluster()
        .conninfo(db)
        .replace("user=postgres", "user=authenticator");
    let mut c = Client::connect(&conninfo, NoTls).expect("connect as authenticator");
    c.batch_execute(&format!("SET ROLE {role}")).unwrap();
    if let Some(claims) = claims {
        c.query(
            "SELECT set_config('request.jwt.claims', $1, false)",
            &[&claims],
        )
        .unwrap();
    }
    c
}

/// A member's JWT claims for `org`.
pub fn claims(org: &str) -> String {
    format!(r#"{{"sub": "user-of-{org}", "role": "authenticated", "organization_id": "{org}"}}"#)
}
