//! Reports built from tasks and activity (DESIGN.md section 6).
pgrx::extension_sql_file!(
    "../../sql/reports.sql",
    name = "reports",
    requires = ["schema"]
);
