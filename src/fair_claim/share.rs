//! Who gets the next slots of a claim: weighted max-min fairness over organizations, and over
//! agents within one. Plain Rust, so that it is tested without Postgres.
//!
//! An organization's share is what it used in the limiter's current window plus what this
//! claim gives it, divided by its weight; the organization with the smallest share gets the
//! next slot. Within an organization, the agent whose most urgent due task has the highest
//! priority goes first; among equals, the one that used least, then the one due longest. Every slot is also bounded
//! by the room left at the global, organization and agent tiers, so that the claim never asks
//! the limiter for what it would refuse.
use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// An organization with due tasks.
#[derive(Clone, Debug)]
pub struct Organization {
    /// Its share of a busy system, relative to others (1 unless an override row says).
    pub weight: f64,
    /// Calls it made in the current window.
    pub used: u64,
    /// Calls its tier admits before the window frees room.
    pub room: u64,
}

/// The due tasks of one agent of an organization.
#[derive(Clone, Debug)]
pub struct Agent {
    /// Index into the organizations.
    pub organization: usize,
    /// The most urgent due task's priority and due time (microseconds).
    pub priority: i32,
    pub due_us: i64,
    /// Calls the agent made in the current window, and the room its tier has left.
    pub used: u64,
    pub room: u64,
    /// Due tasks the claim may still take from it (what it has, as far as the claim knows).
    pub due: u64,
}

impl Agent {
    /// Less is more urgent: higher priority, then the one that used least of its window, then
    /// the longer due.
    fn urgency(&self, given: u64, other: &Agent, other_given: u64) -> Ordering {
        other
            .priority
            .cmp(&self.priority)
            .then((self.used + given).cmp(&(other.used + other_given)))
            .then(self.due_us.cmp(&other.due_us))
    }
}

/// An organization in the queue, ordered by its share (smallest first), then by how urgent its
/// most urgent agent is.
struct Turn {
    share: f64,
    priority: i32,
    due_us: i64,
    organization: usize,
}

impl Ord for Turn {
    fn cmp(&self, other: &Turn) -> Ordering {
        // BinaryHeap pops the greatest: the smallest share must compare greatest.
        other
            .share
            .total_cmp(&self.share)
            .then(self.priority.cmp(&other.priority))
            .then(other.due_us.cmp(&self.due_us))
            .then(other.organization.cmp(&self.organization))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Turn) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Turn {
    fn eq(&self, other: &Turn) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Turn {}

/// How many of `wanted` slots each agent gets, with `global_room` left at the global tier.
/// Agents that get nothing get 0; the sum is at most `wanted` and `global_room`.
pub fn share(
    organizations: &[Organization],
    agents: &[Agent],
    global_room: u64,
    wanted: u64,
) -> Vec<u64> {
    let mut given = vec![0u64; agents.len()];
    let mut org_given = vec![0u64; organizations.len()];
    let mut members: Vec<Vec<usize>> = vec![vec![]; organizations.len()];
    for (i, agent) in agents.iter().enumerate() {
        members[agent.organization].push(i);
    }
    // The agent of an organization that would get its next slot, if any may.
    let next_of = |org: usize, given: &[u64]| -> Option<usize> {
        members[org]
            .iter()
            .copied()
            .filter(|&i| given[i] < agents[i].room.min(agents[i].due))
            .min_by(|&a, &b| agents[a].urgency(given[a], &agents[b], given[b]))
    };
    let turn = |org: usize, org_given: &[u64], given: &[u64]| -> Option<Turn> {
        let o = &organizations[org];
        if org_given[org] >= o.room {
            return None;
        }
        let next = next_of(org, given)?;
        Some(Turn {
            share: (o.used + org_given[org]) as f64 / o.weight.max(f64::MIN_POSITIVE),
            priority: agents[next].priority,
            due_us: agents[next].due_us,
            organization: org,
        })
    };
    let mut queue: BinaryHeap<Turn> = (0..organizations.len())
        .filter_map(|org| turn(org, &org_given, &given))
        .collect();
    let mut left = wanted.min(global_room);
    while left > 0 {
        let Some(Turn { organization, .. }) = queue.pop() else {
            break;
        };
        let Some(agent) = next_of(organization, &given) else {
            continue;
        };
        given[agent] += 1;
        org_given[organization] += 1;
        left -= 1;
        if let Some(next) = turn(organization, &org_given, &given) {
            queue.push(next);
        }
    }
    given
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org(weight: f64, used: u64, room: u64) -> Organization {
        Organization { weight, used, room }
    }

    fn agent(organization: usize, priority: i32, due_us: i64, room: u64, due: u64) -> Agent {
        Agent {
            organization,
            priority,
            due_us,
            used: 0,
            room,
            due,
        }
    }

    #[test]
    fn a_busy_organization_does_not_take_the_slots_of_a_quiet_one() {
        // Organization 0 has a backlog at the highest priority; 1 and 2 have one task each.
        let orgs = [org(1.0, 0, 100), org(1.0, 0, 100), org(1.0, 0, 100)];
        let agents = [
            agent(0, 10, 0, 50, 100_000),
            agent(1, -10, 5, 50, 1),
            agent(2, 0, 9, 50, 1),
        ];
        assert_eq!(share(&orgs, &agents, 400, 3), [1, 1, 1]);
        assert_eq!(share(&orgs, &agents, 400, 10), [8, 1, 1]);
    }

    #[test]
    fn an_organization_without_room_gets_nothing_and_costs_no_slot() {
        let orgs = [org(1.0, 100, 0), org(1.0, 0, 100)];
        let agents = [agent(0, 10, 0, 50, 1000), agent(1, 0, 0, 50, 5)];
        assert_eq!(share(&orgs, &agents, 400, 32), [0, 5]);
        // An agent at its own limit does not hold back its organization's other agents.
        let orgs = [org(1.0, 0, 100)];
        let agents = [agent(0, 10, 0, 0, 1000), agent(0, 0, 0, 50, 7)];
        assert_eq!(share(&orgs, &agents, 400, 32), [0, 7]);
    }

    #[test]
    fn a_binding_global_tier_is_shared_equally_then_by_weight() {
        let orgs: Vec<Organization> = (0..10).map(|_| org(1.0, 0, 100)).collect();
        let agents: Vec<Agent> = (0..10).map(|o| agent(o, 0, 0, 100, 1000)).collect();
        // One slot at a time, as a busy system frees them: the claims add up to 40 each.
        let mut orgs = orgs;
        let mut total = [0u64; 10];
        for _ in 0..400 {
            let given = share(&orgs, &agents, 1, 1);
            for (i, g) in given.iter().enumerate() {
                total[i] += g;
                orgs[i].used += g;
            }
        }
        assert_eq!(total, [40; 10]);
        // Weights 2:1:...: the first gets 2/11 of the slots.
        let mut orgs: Vec<Organization> = (0..10)
            .map(|o| org(if o == 0 { 2.0 } else { 1.0 }, 0, 1000))
            .collect();
        let given = share(&orgs, &agents, 440, 440);
        assert_eq!(given[0], 80);
        assert!(given[1..].iter().all(|&g| g == 40), "{given:?}");
        orgs[0].used = 80;
        assert_eq!(share(&orgs, &agents, 1, 1)[0], 0);
    }

    #[test]
    fn priority_orders_the_agents_of_one_organization_and_the_least_used_goes_first() {
        let orgs = [org(1.0, 0, 100)];
        let agents = [agent(0, 0, 0, 50, 10), agent(0, 5, 100, 50, 2)];
        assert_eq!(share(&orgs, &agents, 400, 3), [1, 2]);
        let mut agents = [agent(0, 0, 0, 50, 10), agent(0, 0, 0, 50, 10)];
        agents[0].used = 3;
        assert_eq!(share(&orgs, &agents, 400, 3), [0, 3]);
        assert_eq!(share(&orgs, &agents, 400, 8), [3, 5]);
    }

    #[test]
    fn no_tier_is_asked_for_more_than_its_room() {
        let orgs = [org(1.0, 0, 3), org(1.0, 0, 100)];
        let agents = [
            agent(0, 0, 0, 50, 10),
            agent(0, 0, 0, 50, 10),
            agent(1, 0, 0, 2, 10),
        ];
        let given = share(&orgs, &agents, 400, 100);
        assert_eq!(given[0] + given[1], 3);
        assert_eq!(given[2], 2);
        assert_eq!(share(&orgs, &agents, 4, 100).iter().sum::<u64>(), 4);
        assert_eq!(share(&orgs, &agents, 0, 100).iter().sum::<u64>(), 0);
        assert_eq!(share(&[], &[], 400, 100), Vec::<u64>::new());
    }
}
