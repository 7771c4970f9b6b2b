-- 0.2.0: internal helpers carry a leading underscore, so that a reader tells them from the
-- API (docs/sql-api.md). Renamed, not dropped and created again: the triggers, policies and
-- grants that use them keep pointing at the same functions, and the replayed files of
-- sql/idempotent/ then bring their bodies up to date. On a fresh install none of the old
-- names exists yet, and this file does nothing.
DO $$
DECLARE
    f record;
BEGIN
    FOR f IN
        SELECT p.oid::pg_catalog.regprocedure AS signature, '_' || p.proname AS new_name
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'ai_agents'::pg_catalog.regnamespace
           AND p.proname = ANY (ARRAY[
        'current_actor',
        'snapshot_agent_version',
        'touch_updated_at',
        'refuse_version_update',
        'rate_limit_overrides_changed',
        'validate_report_template',
        'report_periods',
        'report_window',
        'report_usage',
        'report_usage_totals',
        'run_report_queries',
        'report_data',
        'store_report_narrative',
        'validate_task',
        'propagate_agent_pause',
        'next_run_after_now',
        'refuse_stale_token',
        'log_task_events',
        'notify_task_events',
        'lock_task',
        'set_agent_tasks_paused',
        'llm_cost_usd',
        'claim_llm_calls',
        'record_llm_replies',
        'record_llm_failure',
        'log_discarded_result',
        'release_orphaned_runs',
        'next_wakeup',
        'wake_worker_on_change',
        'guard_extension_objects',
        'calling_role',
        'caller_sees_all_organizations',
        'request_organization_ids',
        'check_organization',
        'rate_limit_keys',
        'reload_rate_limit_overrides_at_commit',
        'wake_worker_at_commit',
        'render_report_markdown',
        'forecast_spend'
           ])
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s RENAME TO %I', f.signature, f.new_name);
    END LOOP;
END
$$;
