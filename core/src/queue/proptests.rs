//! Property tests: random sequences of submit / connect / disconnect / tick / accept /
//! result / cancel with advancing time, checking the queue's invariants after every step,
//! and that a queue restored from its records behaves exactly like the original.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, HashSet};

use proptest::prelude::*;

use super::*;

const AGENTS: u8 = 3;
const TARGETS: u8 = 3;
const T0: u64 = 1_700_000_000_000;

fn config() -> Config {
    Config {
        max_in_flight_per_agent: 2,
        lease: Duration::from_secs(10),
        retry_base: Duration::from_secs(1),
        retry_max: Duration::from_secs(4),
        deadline_grace: Duration::from_secs(5),
    }
}

fn agent_name(i: u8) -> AgentId {
    AgentId(format!("a{i}"))
}

#[derive(Clone, Debug)]
enum Op {
    Submit {
        agent: u8,
        target: u8,
        priority: u8,
        requester: u8,
        key: Option<u8>,
        payload: u8,
        max_attempts: u32,
        timeout_s: u64,
        expires_in: Option<u64>,
    },
    Connect(u8),
    Disconnect(u8),
    /// Advance the clock by this many ms, then tick.
    Advance(u64),
    /// Advance the clock without a tick (the shell woke late): events then meet due
    /// timers that were not applied yet.
    Sleep(u64),
    Tick,
    Accept {
        pick: usize,
        attempt_delta: i8,
        wrong_agent: bool,
    },
    Result {
        pick: usize,
        success: bool,
        retriable: bool,
        attempt_delta: i8,
        wrong_agent: bool,
    },
    Cancel {
        pick: usize,
    },
}

fn attempt_delta() -> impl Strategy<Value = i8> {
    prop_oneof![8 => Just(0i8), 1 => Just(-1i8), 1 => Just(1i8)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (
            0..AGENTS,
            0..TARGETS,
            0..3u8,
            0..2u8,
            proptest::option::weighted(0.5, 0..3u8),
            0..2u8,
            1..4u32,
            0..20u64,
            proptest::option::weighted(0.4, 0..60_000u64),
        )
            .prop_map(
                |(agent, target, priority, requester, key, payload, max_attempts, timeout_s, expires_in)| {
                    Op::Submit {
                        agent,
                        target,
                        priority,
                        requester,
                        key,
                        payload,
                        max_attempts,
                        timeout_s,
                        expires_in,
                    }
                }
            ),
        2 => (0..AGENTS).prop_map(Op::Connect),
        1 => (0..AGENTS).prop_map(Op::Disconnect),
        3 => (0..15_000u64).prop_map(Op::Advance),
        2 => (0..15_000u64).prop_map(Op::Sleep),
        1 => Just(Op::Tick),
        4 => (any::<usize>(), attempt_delta(), proptest::bool::weighted(0.1)).prop_map(
            |(pick, attempt_delta, wrong_agent)| Op::Accept {
                pick,
                attempt_delta,
                wrong_agent
            }
        ),
        4 => (
            any::<usize>(),
            any::<bool>(),
            any::<bool>(),
            attempt_delta(),
            proptest::bool::weighted(0.1)
        )
            .prop_map(|(pick, success, retriable, attempt_delta, wrong_agent)| Op::Result {
                pick,
                success,
                retriable,
                attempt_delta,
                wrong_agent
            }),
        1 => any::<usize>().prop_map(|pick| Op::Cancel { pick }),
    ]
}

/// What an operation returned, for comparing two queues.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Answer {
    Submit(Result<(Submission, Outcome), QueueError>),
    Outcome(Outcome),
    Fallible(Result<Outcome, QueueError>),
    NoTask,
}

/// A queue plus what the test remembers about its history.
#[derive(Clone)]
struct World {
    q: Queue,
    now: u64,
    next_id: u128,
    ids: Vec<TaskId>,
    connected: BTreeSet<AgentId>,
    /// `(task, attempt)` results that changed something.
    counted: HashSet<(TaskId, u32)>,
    dispatched_once: HashSet<TaskId>,
    /// Per (agent, target): the seq of the last task dispatched for the first time.
    last_first_dispatch: HashMap<(AgentId, String), u64>,
    /// Restored, and its agents not all reported back yet: leases from before the
    /// restart are still held by offline agents.
    reconnecting: bool,
}

impl World {
    fn new() -> Self {
        World {
            q: Queue::new(config()),
            now: T0,
            next_id: 1,
            ids: Vec::new(),
            connected: BTreeSet::new(),
            counted: HashSet::new(),
            dispatched_once: HashSet::new(),
            last_first_dispatch: HashMap::new(),
            reconnecting: false,
        }
    }

    /// Picks a task: mostly one in flight (where the interesting events are), else any.
    fn pick(&self, pick: usize) -> Option<TaskId> {
        let in_flight: Vec<TaskId> = self
            .q
            .records()
            .filter(|t| t.state.is_in_flight())
            .map(|t| t.id)
            .collect();
        if pick % 4 != 0 && !in_flight.is_empty() {
            Some(in_flight[pick / 4 % in_flight.len()])
        } else if self.ids.is_empty() {
            None
        } else {
            Some(self.ids[pick / 4 % self.ids.len()])
        }
    }

    fn report_target(&self, pick: usize, delta: i8, wrong: bool) -> Option<(AgentId, TaskId, u32)> {
        let id = self.pick(pick)?;
        let record = self.q.get(id).expect("picked task exists");
        let attempt = (i64::from(record.attempt) + i64::from(delta)).max(1);
        let agent = if wrong {
            AgentId("intruder".into())
        } else {
            record.agent.clone()
        };
        Some((agent, id, u32::try_from(attempt).expect("small attempt")))
    }

    fn apply(&mut self, op: &Op) -> Answer {
        let now = self.now;
        match *op {
            Op::Submit {
                agent,
                target,
                priority,
                requester,
                key,
                payload,
                max_attempts,
                timeout_s,
                expires_in,
            } => {
                let id = TaskId::from_u128(self.next_id);
                self.next_id += 1;
                let task = NewTask {
                    id,
                    kind: "deploy".into(),
                    requester: format!("r{requester}"),
                    idempotency_key: key.map(|k| format!("k{k}")),
                    payload_hash: [payload; 32],
                    agent: agent_name(agent),
                    target: format!("t{target}"),
                    priority: [Priority::Low, Priority::Normal, Priority::High]
                        [usize::from(priority)],
                    max_attempts,
                    timeout: Duration::from_secs(timeout_s),
                    expires_at: expires_in.map(|d| now + d),
                };
                let answer = self.q.submit(task, now);
                if let Ok((Submission::Created(id), _)) = &answer {
                    self.ids.push(*id);
                }
                Answer::Submit(answer)
            }
            Op::Connect(i) => {
                self.connected.insert(agent_name(i));
                Answer::Outcome(self.q.agent_connected(&agent_name(i), now))
            }
            Op::Disconnect(i) => {
                self.connected.remove(&agent_name(i));
                Answer::Outcome(self.q.agent_disconnected(&agent_name(i), now))
            }
            Op::Advance(ms) => {
                self.now += ms;
                Answer::Outcome(self.q.tick(self.now))
            }
            Op::Sleep(ms) => {
                self.now += ms;
                Answer::NoTask
            }
            Op::Tick => Answer::Outcome(self.q.tick(now)),
            Op::Accept {
                pick,
                attempt_delta,
                wrong_agent,
            } => match self.report_target(pick, attempt_delta, wrong_agent) {
                Some((agent, id, attempt)) => {
                    Answer::Fallible(self.q.accepted(&agent, id, attempt, now))
                }
                None => Answer::NoTask,
            },
            Op::Result {
                pick,
                success,
                retriable,
                attempt_delta,
                wrong_agent,
            } => match self.report_target(pick, attempt_delta, wrong_agent) {
                Some((agent, id, attempt)) => {
                    let summary = ResultSummary {
                        success,
                        retriable,
                        error: (!success).then(|| "boom".to_owned()),
                    };
                    Answer::Fallible(self.q.result(&agent, id, attempt, summary, now))
                }
                None => Answer::NoTask,
            },
            Op::Cancel { pick } => match self.pick(pick) {
                Some(id) => Answer::Fallible(self.q.cancel(id, now)),
                None => Answer::NoTask,
            },
        }
    }

    /// Applies `op` and checks every invariant; returns the answer.
    fn step(&mut self, op: &Op) -> Answer {
        let before: HashMap<TaskId, TaskRecord> =
            self.q.records().map(|t| (t.id, t.clone())).collect();
        let answer = self.apply(op);
        self.check(op, &before, &answer);
        answer
    }

    fn check(&mut self, op: &Op, before: &HashMap<TaskId, TaskRecord>, answer: &Answer) {
        let q = &self.q;
        let now = self.now;
        let cap = q.config().max_in_flight_per_agent;
        q.check_consistency();
        let after: HashMap<TaskId, TaskRecord> = q.records().map(|t| (t.id, t.clone())).collect();

        let empty = Outcome::default();
        let outcome = match answer {
            Answer::Submit(Ok((_, outcome))) | Answer::Outcome(outcome) => outcome,
            Answer::Fallible(Ok(outcome)) => outcome,
            Answer::Submit(Err(_)) | Answer::Fallible(Err(_)) | Answer::NoTask => {
                // A refused event changes nothing at all.
                assert_eq!(&after, before, "{op:?} was refused but changed records");
                &empty
            }
        };

        // `changed` lists every changed record, once; each state change is notified.
        let changed: HashSet<TaskId> = outcome.changed.iter().copied().collect();
        assert_eq!(changed.len(), outcome.changed.len(), "duplicate in changed");
        for (id, record) in &after {
            let old = before.get(id);
            if old != Some(record) {
                assert!(
                    changed.contains(id),
                    "{op:?}: {id} changed but not reported"
                );
            }
            if old.map(|o| o.state) != Some(record.state) {
                assert!(
                    outcome.effects.contains(&Effect::Notify {
                        task: *id,
                        state: record.state
                    }),
                    "{op:?}: state change of {id} not notified"
                );
            }
        }
        for id in &changed {
            assert!(after.contains_key(id));
        }
        assert_eq!(after.len(), self.ids.len());

        // Terminal records never change.
        for (id, old) in before {
            if old.state.is_terminal() {
                assert_eq!(
                    Some(old),
                    after.get(id),
                    "{op:?}: terminal task {id} changed"
                );
            }
        }

        // One in flight per (agent, target); at most `cap` per agent.
        let mut per_target: HashMap<(&AgentId, &str), usize> = HashMap::new();
        let mut per_agent: HashMap<&AgentId, usize> = HashMap::new();
        for t in after.values().filter(|t| t.state.is_in_flight()) {
            *per_target.entry((&t.agent, &t.target)).or_default() += 1;
            *per_agent.entry(&t.agent).or_default() += 1;
            // Leases: held exactly while the agent is connected.
            if t.state == TaskState::Dispatched && !self.reconnecting {
                assert_eq!(t.lease_until.is_some(), self.connected.contains(&t.agent));
            }
        }
        assert!(
            per_target.values().all(|&n| n <= 1),
            "{op:?}: two in flight on a target"
        );
        for (agent, n) in &per_agent {
            assert!(*n <= cap, "{op:?}: {agent} has {n} in flight");
            assert_eq!(q.agent_in_flight(agent), *n);
        }
        for i in 0..AGENTS {
            let a = agent_name(i);
            assert_eq!(q.is_connected(&a), self.connected.contains(&a));
        }

        // Dispatches: to connected agents, before expiry, in submission order per target.
        for (agent, id, attempt) in outcome.dispatches() {
            let t = &after[&id];
            assert_eq!(t.state, TaskState::Dispatched, "{op:?}");
            assert_eq!((&t.agent, t.attempt), (agent, attempt));
            assert!(
                self.connected.contains(agent),
                "{op:?}: dispatch to offline {agent}"
            );
            assert!(
                t.expires_at.is_none_or(|e| now < e),
                "{op:?}: dispatch at {now} of {id} expiring at {:?}",
                t.expires_at
            );
            assert_eq!(t.lease_until, Some(now + 10_000));
            for other in after.values() {
                if other.agent == t.agent && other.target == t.target && other.seq < t.seq {
                    assert!(
                        other.state.is_terminal(),
                        "{op:?}: {id} overtook {}",
                        other.id
                    );
                }
            }
            if self.dispatched_once.insert(id) {
                let last = self
                    .last_first_dispatch
                    .entry((t.agent.clone(), t.target.clone()))
                    .or_insert(0);
                assert!(*last < t.seq, "{op:?}: out of order on {}", t.target);
                *last = t.seq;
            }
        }

        // Priority across targets: whatever was newly dispatched to an agent ranks before
        // every head it left waiting although it could run now.
        let rank = |t: &TaskRecord| (Reverse(t.priority), t.seq);
        let mut waiting_heads: HashMap<(&AgentId, &str), &TaskRecord> = HashMap::new();
        let mut busy: HashSet<(&AgentId, &str)> = HashSet::new();
        for t in after.values() {
            if t.state == TaskState::Queued {
                let head = waiting_heads.entry((&t.agent, &t.target)).or_insert(t);
                if t.seq < head.seq {
                    *head = t;
                }
            } else if t.state.is_in_flight() {
                busy.insert((&t.agent, &t.target));
            }
        }
        for (agent, id, _) in outcome.dispatches() {
            let t = &after[&id];
            if before
                .get(&id)
                .is_none_or(|old| old.state != TaskState::Queued)
            {
                continue; // a re-send
            }
            for ((a, target), head) in &waiting_heads {
                let eligible = !busy.contains(&(*a, *target))
                    && head.not_before.is_none_or(|nb| nb <= now)
                    && head.expires_at.is_none_or(|e| e > now);
                if *a == agent && eligible {
                    assert!(
                        rank(t) < rank(head),
                        "{op:?}: {id} dispatched before {}",
                        head.id
                    );
                }
            }
        }

        // A (task, attempt) result is counted once, and every accepted result is acked.
        if let (Op::Result { .. }, Answer::Fallible(Ok(outcome))) = (op, answer) {
            let acks: Vec<(TaskId, u32)> = outcome
                .effects
                .iter()
                .filter_map(|e| match e {
                    Effect::AckResult { task, attempt, .. } => Some((*task, *attempt)),
                    _ => None,
                })
                .collect();
            assert_eq!(acks.len(), 1, "{op:?}: {outcome:?}");
            let (task, attempt) = acks[0];
            if changed.contains(&task) {
                assert!(
                    self.counted.insert((task, attempt)),
                    "{op:?}: result for ({task}, {attempt}) counted twice"
                );
                let (old, new) = (&before[&task], &after[&task]);
                assert!(old.state.is_in_flight());
                assert_eq!(old.attempt, attempt);
                assert!(new.state.is_terminal() || new.attempt == attempt + 1);
            }
        }
        if let (Op::Accept { .. }, Answer::Fallible(Ok(outcome))) = (op, answer) {
            for id in &outcome.changed {
                assert_eq!(before[id].state, TaskState::Dispatched);
                assert_eq!(after[id].state, TaskState::Running);
            }
        }
        for t in after.values() {
            if t.state == TaskState::Queued && t.attempt > 1 {
                // A retry is never scheduled at or past expires_at.
                let nb = t.not_before.expect("retry has a backoff");
                assert!(t.expires_at.is_none_or(|e| nb < e));
            }
            assert!(t.attempt <= t.max_attempts);
        }

        // After a tick, nothing due is left and the work is done.
        if matches!(op, Op::Tick | Op::Advance(_)) {
            assert!(q.next_wakeup().is_none_or(|at| at > now));
            for t in after.values() {
                match t.state {
                    TaskState::Queued | TaskState::Dispatched => {
                        assert!(t.expires_at.is_none_or(|e| e > now), "{t:?} not expired");
                        assert!(
                            t.lease_until.is_none_or(|l| l > now),
                            "{t:?} lease not renewed"
                        );
                    }
                    TaskState::Running => {
                        let deadline = t.accepted_at.unwrap() + t.timeout_ms + 5_000;
                        assert!(deadline > now, "{t:?} past its deadline");
                    }
                    _ => {}
                }
            }
            // Work-conserving: a connected agent with a free slot has no dispatchable head.
            for a in &self.connected {
                if q.agent_in_flight(a) >= cap {
                    continue;
                }
                let mut heads: HashMap<&str, &TaskRecord> = HashMap::new();
                let mut busy: HashSet<&str> = HashSet::new();
                for t in after.values().filter(|t| &t.agent == a) {
                    match t.state {
                        TaskState::Queued => {
                            let head = heads.entry(&t.target).or_insert(t);
                            if t.seq < head.seq {
                                *head = t;
                            }
                        }
                        s if s.is_in_flight() => {
                            busy.insert(&t.target);
                        }
                        _ => {}
                    }
                }
                for (target, head) in heads {
                    if !busy.contains(target) {
                        assert!(
                            head.not_before.is_some_and(|nb| nb > now),
                            "{op:?}: {a} has a free slot but {} waits",
                            head.id
                        );
                    }
                }
            }
        }
    }
}

fn records(q: &Queue) -> Vec<TaskRecord> {
    q.records().cloned().collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Every invariant holds after every step of a random history.
    #[test]
    fn invariants_hold(ops in prop::collection::vec(op(), 1..120)) {
        let mut world = World::new();
        for op in &ops {
            world.step(op);
        }
        // Whatever happened, a queue restored from the records is consistent.
        let restored = Queue::restore(records(&world.q), config()).expect("restore");
        restored.check_consistency();
        prop_assert_eq!(records(&restored), records(&world.q));
    }

    /// A queue restored from its (serialized) records gives the same answers to the same
    /// next events as the original. The shell reports the agents that come back first.
    #[test]
    fn restore_behaves_identically(
        first in prop::collection::vec(op(), 0..80),
        then in prop::collection::vec(op(), 1..80),
    ) {
        let mut original = World::new();
        for op in &first {
            original.step(op);
        }
        let bytes = postcard::to_allocvec(&records(&original.q)).expect("serialize");
        let stored: Vec<TaskRecord> = postcard::from_bytes(&bytes).expect("deserialize");
        let mut restored = original.clone();
        // Restore from the records in reverse order: order must not matter.
        restored.q = Queue::restore(stored.into_iter().rev(), config()).expect("restore");
        prop_assert_eq!(restored.q.connected_agents(), Vec::<AgentId>::new());
        restored.connected.clear();
        restored.reconnecting = true;
        prop_assert_eq!(records(&restored.q), records(&original.q));
        let reconnect: Vec<Op> = (0..AGENTS)
            .filter(|&i| original.connected.contains(&agent_name(i)))
            .map(Op::Connect)
            .collect();
        for op in &reconnect {
            prop_assert_eq!(original.step(op), restored.step(op), "after {:?}", op);
        }
        restored.reconnecting = false;
        for op in &then {
            let a = original.step(op);
            let b = restored.step(op);
            prop_assert_eq!(&a, &b, "after {:?}", op);
            prop_assert_eq!(records(&original.q), records(&restored.q));
            if matches!(op, Op::Tick | Op::Advance(_)) {
                prop_assert_eq!(original.q.next_wakeup(), restored.q.next_wakeup());
            }
        }
    }
}
