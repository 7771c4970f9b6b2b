//! Recording what the HTTP threads finished: replies in one statement, failures one by one,
//! in a transaction of the caller's (mod.rs `record_finished`). A call whose task row another
//! session holds locked is not waited on: it comes back to be recorded next turn.
use super::pool::Done;
use super::statements::Statements;
use super::steps::{self, ToolRun};
use crate::llm;
use crate::ratelimit;
use pgrx::prelude::*;
use std::collections::HashSet;

/// What recording some finished calls came to, by task id.
pub struct Recorded {
    completed: HashSet<String>,
    /// The calls whose task rows were locked: to be recorded again next turn.
    busy: HashSet<String>,
    /// The tool calls of replies stored as steps, to run once this transaction commits.
    pub tool_runs: Vec<ToolRun>,
}

impl Recorded {
    /// Per recorded call its pass and whether its task completed; and the calls to record
    /// again next turn.
    pub fn split(self, finished: Vec<Done>) -> (Vec<(Option<u64>, bool)>, Vec<Done>) {
        let (busy, recorded): (Vec<Done>, Vec<Done>) = finished
            .into_iter()
            .partition(|done| self.busy.contains(&done.task_id));
        let outcomes = recorded
            .iter()
            .map(|done| (done.pass, self.completed.contains(&done.task_id)))
            .collect();
        (outcomes, busy)
    }
}

/// Records the finished calls. The replies are recorded together, in one statement per shard
/// (see _record_llm_replies; one on one server), but those of the agent loop, each stored as a
/// step; the failures,
/// rarer and each with its own retry decision, one by one. An ERROR ends the caller's
/// transaction, and nothing of it is kept.
pub fn record(st: &Statements, finished: &[Done]) -> Recorded {
    let (looped, replies): (Replies, Replies) = finished
        .iter()
        .filter_map(|done| done.outcome.as_ref().ok().map(|reply| (done, reply)))
        .partition(|(done, _)| done.looped);
    let mut completed = HashSet::new();
    let mut busy = HashSet::new();
    let mut tool_runs = vec![];
    for (done, reply) in looped {
        match record_step(st, done, reply) {
            Step::Completed => {
                completed.insert(done.task_id.clone());
            }
            Step::Busy => {
                busy.insert(done.task_id.clone());
            }
            Step::Repair => {
                completed.insert(done.task_id.clone());
                tool_runs.push(ToolRun {
                    task_id: done.task_id.clone(),
                    fencing_token: done.fencing_token,
                    calls: vec![],
                });
            }
            Step::Tools(first) => {
                // The call succeeded: its task goes on (to a run_scheduler_once pass too).
                completed.insert(done.task_id.clone());
                tool_runs.push(ToolRun {
                    task_id: done.task_id.clone(),
                    fencing_token: done.fencing_token,
                    calls: (first..).zip(reply.tool_calls.iter().cloned()).collect(),
                });
            }
            Step::Ended => {}
        }
    }
    let mut shards: Vec<Option<i64>> = replies.iter().map(|(done, _)| done.shard).collect();
    shards.sort_unstable();
    shards.dedup();
    for shard in shards {
        let of_shard: Replies = replies
            .iter()
            .filter(|(done, _)| done.shard == shard)
            .copied()
            .collect();
        record_replies(st, &of_shard, &mut completed, &mut busy);
    }
    for done in finished {
        let Err(failure) = &done.outcome else {
            continue;
        };
        // A 429 with Retry-After pauses the credential that was refused (credential.rs): every
        // claim of a task that would use it waits until then. Shared memory, not the table,
        // so it holds even if this transaction does not commit.
        if let (Some(429), Some(ahead), false, Some(credential)) = (
            failure.http_status,
            failure.retry_after,
            failure.permanent,
            &done.credential,
        ) {
            if let Err(e) = credential.pause(ahead) {
                warning!("ai_agents worker: a credential could not be paused: {e}");
            }
        }
        let status = Spi::connect(|client| {
            client
                .select(
                    &st.failure,
                    Some(1),
                    &[
                        done.task_id.as_str().into(),
                        done.fencing_token.into(),
                        failure.message.as_str().into(),
                        failure.http_status.map(i32::from).into(),
                        failure
                            .retry_after
                            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                            .into(),
                        failure.permanent.into(),
                        failure.request_id.as_deref().into(),
                        elapsed_ms(done).into(),
                    ],
                )?
                .first()
                .get_one::<String>()
        })
        .unwrap_or_else(|e| error!("recording task {} failed: {e}", done.task_id));
        if status.as_deref() == Some("busy") {
            busy.insert(done.task_id.clone());
        }
    }
    Recorded {
        completed,
        busy,
        tool_runs,
    }
}

/// Records `replies` (of one shard's tasks) in one statement.
fn record_replies(
    st: &Statements,
    replies: &Replies,
    completed: &mut HashSet<String>,
    busy: &mut HashSet<String>,
) {
    let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    Spi::connect(|client| {
        let rows = client.select(
            &st.replies,
            None,
            &[
                column(replies, |d, _| d.task_id.as_str()).into(),
                column(replies, |d, _| d.fencing_token).into(),
                column(replies, |_, r| r.content.as_str()).into(),
                column(replies, |_, r| tokens(r.input_tokens)).into(),
                column(replies, |_, r| tokens(r.output_tokens)).into(),
                column(replies, |_, r| tokens(r.cached_input_tokens)).into(),
                column(replies, |_, r| tokens(r.cache_write_tokens)).into(),
                column(replies, |_, r| r.model.as_str()).into(),
                column(replies, |_, r| r.request_id.as_deref()).into(),
                column(replies, |d, _| elapsed_ms(d)).into(),
            ],
        )?;
        for row in rows {
            let task = row.get::<String>(1)?.unwrap_or_default();
            match row.get::<String>(2)?.as_deref() {
                Some("completed") => completed.insert(task),
                Some("busy") => busy.insert(task),
                _ => false,
            };
        }
        Ok::<_, pgrx::spi::SpiError>(())
    })
    .unwrap_or_else(|e| error!("recording {} replies failed: {e}", replies.len()));
}

/// Finished calls with their replies.
type Replies<'a> = Vec<(&'a Done, &'a llm::Reply)>;

/// What storing one reply of the loop came to.
enum Step {
    Completed,
    Busy,
    /// Its tool calls are to run, the first stored as this step.
    Tools(i32),
    /// The output schema refused the answer: the task continues to its repair turn.
    Repair,
    /// Failed for good (max_steps) or discarded (the run is no longer current).
    Ended,
}

fn record_step(st: &Statements, done: &Done, reply: &llm::Reply) -> Step {
    let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    let calls = steps::stored_calls(&reply.tool_calls).to_string();
    // A final answer is checked against the output schema here, on the main thread.
    let (result, invalid) = match (&done.output_schema, reply.tool_calls.is_empty()) {
        (Some(schema), true) => match steps::check_answer(schema, &reply.content) {
            Ok(answer) => (Some(answer.to_string()), None),
            Err(why) => (None, Some(why)),
        },
        _ => (None, None),
    };
    let row = Spi::connect(|client| {
        let row = client
            .select(
                &st.llm_step,
                Some(1),
                &[
                    done.task_id.as_str().into(),
                    done.fencing_token.into(),
                    reply.content.as_str().into(),
                    calls.as_str().into(),
                    tokens(reply.input_tokens).into(),
                    tokens(reply.output_tokens).into(),
                    tokens(reply.cached_input_tokens).into(),
                    tokens(reply.cache_write_tokens).into(),
                    reply.model.as_str().into(),
                    reply.request_id.as_deref().into(),
                    elapsed_ms(done).into(),
                    result.as_deref().into(),
                    invalid.as_deref().into(),
                ],
            )?
            .first();
        Ok::<_, pgrx::spi::SpiError>((
            row.get_by_name::<String, _>("status")?,
            row.get_by_name::<i32, _>("step_number")?,
        ))
    })
    .unwrap_or_else(|e| error!("recording a step of task {} failed: {e}", done.task_id));
    match row {
        (Some(status), _) if status == "completed" => Step::Completed,
        (Some(status), _) if status == "busy" => Step::Busy,
        (Some(status), Some(number)) if status == "tools" => Step::Tools(number + 1),
        (Some(status), _) if status == "repair" => Step::Repair,
        _ => Step::Ended,
    }
}

/// Settles the token reservations of calls that have just finished, once each (a reply that
/// is recorded again next turn is not settled again). A reply used what the provider
/// reported; an error answer used nothing, nor did a call never sent; a call that got no
/// answer (a timeout, a reset) keeps its reservation, as the provider may have billed it.
pub fn settle(finished: &[Done]) {
    for done in finished {
        let Some(reservation) = &done.reservation else {
            continue;
        };
        match &done.outcome {
            Ok(reply) => ratelimit::settle(
                reservation,
                reply.input_tokens.saturating_add(reply.output_tokens),
            ),
            Err(failure)
                if done.credential.is_none()
                    || failure.http_status.is_some_and(|status| status >= 400) =>
            {
                ratelimit::settle(reservation, 0)
            }
            Err(_) => {}
        }
    }
}

/// One array argument of record_llm_replies: a field of every reply.
fn column<'a, T>(
    replies: &[(&'a Done, &'a llm::Reply)],
    field: impl Fn(&'a Done, &'a llm::Reply) -> T,
) -> Vec<T> {
    replies.iter().map(|&(d, r)| field(d, r)).collect()
}

fn elapsed_ms(done: &Done) -> i32 {
    i32::try_from(done.elapsed.as_millis()).unwrap_or(i32::MAX)
}
