//! Recording what the HTTP threads finished: replies in one statement, failures one by one,
//! in the turn's transaction. A call whose task row another session holds locked is not
//! waited on: it comes back to be recorded next turn.
use super::pool::Done;
use super::statements::Statements;
use crate::llm;
use pgrx::prelude::*;

/// What recording a turn's finished calls came to.
pub struct Recorded {
    /// Per recorded call: its pass and whether its task completed.
    pub outcomes: Vec<(Option<u64>, bool)>,
    /// The calls whose task rows were locked: to be recorded again next turn.
    pub busy: Vec<Done>,
}

/// Records the finished calls. The replies are recorded together, in one statement (see
/// _record_llm_replies); the failures, rarer and each with its own retry decision, one by one.
pub fn record(st: &Statements, finished: Vec<Done>) -> Recorded {
    let replies: Vec<(&Done, &llm::Reply)> = finished
        .iter()
        .filter_map(|done| done.outcome.as_ref().ok().map(|reply| (done, reply)))
        .collect();
    let mut completed = std::collections::HashSet::new();
    let mut busy = std::collections::HashSet::new();
    if !replies.is_empty() {
        let tokens = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        Spi::connect(|client| {
            let rows = client.select(
                &st.replies,
                None,
                &[
                    column(&replies, |d, _| d.task_id.as_str()).into(),
                    column(&replies, |d, _| d.fencing_token).into(),
                    column(&replies, |_, r| r.content.as_str()).into(),
                    column(&replies, |_, r| tokens(r.input_tokens)).into(),
                    column(&replies, |_, r| tokens(r.output_tokens)).into(),
                    column(&replies, |_, r| r.model.as_str()).into(),
                    column(&replies, |_, r| r.request_id.as_deref()).into(),
                    column(&replies, |d, _| elapsed_ms(d)).into(),
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
        .unwrap_or_else(|e| {
            error!(
                "ai_agents worker: recording {} replies failed: {e}",
                replies.len()
            )
        });
    }
    for done in &finished {
        let Err(failure) = &done.outcome else {
            continue;
        };
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
        .unwrap_or_else(|e| {
            error!(
                "ai_agents worker: recording task {} failed: {e}",
                done.task_id
            )
        });
        if status.as_deref() == Some("busy") {
            busy.insert(done.task_id.clone());
        }
    }
    let (busy, recorded): (Vec<Done>, Vec<Done>) = finished
        .into_iter()
        .partition(|done| busy.contains(&done.task_id));
    Recorded {
        outcomes: recorded
            .iter()
            .map(|done| (done.pass, completed.contains(&done.task_id)))
            .collect(),
        busy,
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
