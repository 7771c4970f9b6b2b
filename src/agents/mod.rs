//! Agents and their immutable versions: `create_agent_version_from_current`, the automatic
//! snapshot on every configuration change, and `activate_agent_version` to roll back.
//! All of it is SQL (sql/agents.sql); tasks pin the version they ran with when claimed.
pgrx::extension_sql_file!(
    "../../sql/agents.sql",
    name = "agents",
    requires = ["schema"]
);
