//! Unit tests: one or more per rule of the module documentation.

use super::*;

const SEC: u64 = 1000;
const T0: u64 = 1_700_000_000_000;

fn agent(name: &str) -> AgentId {
    AgentId::new(name)
}

fn id(n: u128) -> TaskId {
    TaskId::from_u128(n)
}

fn hash(n: u8) -> [u8; 32] {
    [n; 32]
}

fn task(n: u128, agent_name: &str, target: &str) -> NewTask {
    NewTask {
        id: id(n),
        kind: "deploy".into(),
        requester: "ci".into(),
        idempotency_key: None,
        payload_hash: hash(0),
        agent: agent(agent_name),
        target: target.into(),
        priority: Priority::Normal,
        max_attempts: 1,
        timeout: Duration::from_secs(60),
        expires_at: None,
    }
}

fn config() -> Config {
    Config::default()
}

/// Submits and expects a new task.
fn submit(q: &mut Queue, t: NewTask, now: u64) -> Outcome {
    let want = t.id;
    let (submission, outcome) = q.submit(t, now).expect("submit");
    assert_eq!(submission, Submission::Created(want));
    q.check_consistency();
    outcome
}

fn dispatched(outcome: &Outcome) -> Vec<(String, TaskId, u32)> {
    outcome
        .dispatches()
        .map(|(a, t, n)| (a.0.clone(), t, n))
        .collect()
}

fn state(q: &Queue, n: u128) -> TaskState {
    q.get(id(n)).expect("task").state
}

fn has(outcome: &Outcome, effect: &Effect) -> bool {
    outcome.effects.contains(effect)
}

/// Dispatched -> running -> success, checking the outcome.
fn run_ok(q: &mut Queue, agent_name: &str, n: u128, now: u64) -> Outcome {
    let a = agent(agent_name);
    let attempt = q.get(id(n)).unwrap().attempt;
    q.accepted(&a, id(n), attempt, now).expect("accepted");
    let out = q
        .result(&a, id(n), attempt, ResultSummary::ok(), now)
        .expect("result");
    q.check_consistency();
    out
}

// ---- submit and idempotency -------------------------------------------------------

#[test]
fn submit_creates_a_queued_task() {
    let mut q = Queue::new(config());
    let out = submit(&mut q, task(1, "a", "web"), T0);
    assert_eq!(out.changed, vec![id(1)]);
    assert_eq!(
        out.effects,
        vec![Effect::Notify {
            task: id(1),
            state: TaskState::Queued
        }]
    );
    let r = q.get(id(1)).unwrap();
    assert_eq!(r.state, TaskState::Queued);
    assert_eq!(r.attempt, 1);
    assert_eq!(r.seq, 1);
    assert_eq!((r.created_at, r.updated_at), (T0, T0));
    assert_eq!(r.timeout_ms, 60 * SEC);
    assert_eq!(q.len(), 1);
    assert_eq!(q.count(TaskState::Queued), 1);
}

#[test]
fn idempotency_same_key_same_payload_returns_existing() {
    let mut q = Queue::new(config());
    let mut t = task(1, "a", "web");
    t.idempotency_key = Some("k".into());
    submit(&mut q, t.clone(), T0);
    let mut again = t.clone();
    again.id = id(2);
    let (s, out) = q.submit(again, T0 + 1).unwrap();
    assert_eq!(s, Submission::Existing(id(1)));
    assert_eq!(s.http_status(), 200);
    assert!(out.is_empty());
    assert_eq!(q.len(), 1);
}

#[test]
fn idempotency_same_key_other_payload_conflicts_and_changes_nothing() {
    let mut q = Queue::new(config());
    let mut t = task(1, "a", "web");
    t.idempotency_key = Some("k".into());
    submit(&mut q, t.clone(), T0);
    let before: Vec<TaskRecord> = q.records().cloned().collect();
    let mut other = t.clone();
    other.id = id(2);
    other.payload_hash = hash(9);
    let (s, out) = q.submit(other, T0 + 1).unwrap();
    assert_eq!(s, Submission::Conflict(id(1)));
    assert_eq!(s.http_status(), 409);
    assert!(out.is_empty());
    assert_eq!(q.records().cloned().collect::<Vec<_>>(), before);
}

#[test]
fn idempotency_is_scoped_per_requester_and_keyless_tasks_are_always_new() {
    let mut q = Queue::new(config());
    let mut t = task(1, "a", "web");
    t.idempotency_key = Some("k".into());
    submit(&mut q, t.clone(), T0);
    let mut other = t.clone();
    other.id = id(2);
    other.requester = "alice".into();
    submit(&mut q, other, T0);
    submit(&mut q, task(3, "a", "web"), T0);
    submit(&mut q, task(4, "a", "web"), T0);
    assert_eq!(q.len(), 4);
    assert_eq!(q.find_by_key("ci", "k"), Some(id(1)));
    assert_eq!(q.find_by_key("alice", "k"), Some(id(2)));
}

#[test]
fn idempotency_survives_restore_and_finishing() {
    let mut q = Queue::new(config());
    let mut t = task(1, "a", "web");
    t.idempotency_key = Some("k".into());
    submit(&mut q, t.clone(), T0);
    q.cancel(id(1), T0).unwrap();
    let mut r = Queue::restore(q.records().cloned(), config()).unwrap();
    r.check_consistency();
    let mut again = t.clone();
    again.id = id(2);
    assert_eq!(
        r.submit(again.clone(), T0).unwrap().0,
        Submission::Existing(id(1))
    );
    again.payload_hash = hash(7);
    assert_eq!(r.submit(again, T0).unwrap().0, Submission::Conflict(id(1)));
}

#[test]
fn duplicate_task_id_is_refused() {
    let mut q = Queue::new(config());
    submit(&mut q, task(1, "a", "web"), T0);
    assert_eq!(
        q.submit(task(1, "a", "db"), T0),
        Err(QueueError::DuplicateTaskId(id(1)))
    );
}

#[test]
fn restore_refuses_contradictory_records() {
    let mut q = Queue::new(config());
    let mut t = task(1, "a", "web");
    t.idempotency_key = Some("k".into());
    submit(&mut q, t, T0);
    let r = q.get(id(1)).unwrap().clone();
    assert_eq!(
        Queue::restore([r.clone(), r.clone()], config()).unwrap_err(),
        QueueError::DuplicateTaskId(id(1))
    );
    let mut other = r.clone();
    other.id = id(2);
    other.seq = 2;
    assert!(matches!(
        Queue::restore([r.clone(), other.clone()], config()),
        Err(QueueError::InvalidRecord { .. })
    ));
    other.idempotency_key = None;
    other.seq = 1;
    assert!(matches!(
        Queue::restore([r, other], config()),
        Err(QueueError::InvalidRecord { .. })
    ));
}

// ---- ordering: FIFO per target, one at a time, priority across targets, cap -------

#[test]
fn one_task_per_target_in_submission_order_regardless_of_priority() {
    let mut q = Queue::new(config());
    let a = agent("a");
    q.agent_connected(&a, T0);
    let out = submit(&mut q, task(1, "a", "web"), T0);
    assert_eq!(dispatched(&out), vec![("a".into(), id(1), 1)]);
    let mut second = task(2, "a", "web");
    second.priority = Priority::Low;
    let mut third = task(3, "a", "web");
    third.priority = Priority::High;
    assert!(dispatched(&submit(&mut q, second, T0)).is_empty());
    assert!(dispatched(&submit(&mut q, third, T0)).is_empty());
    assert_eq!(q.agent_in_flight(&a), 1);

    // Only when 1 finishes does 2 (low, but submitted first) go, then 3.
    let out = run_ok(&mut q, "a", 1, T0 + SEC);
    assert_eq!(dispatched(&out), vec![("a".into(), id(2), 1)]);
    assert_eq!(state(&q, 3), TaskState::Queued);
    let out = run_ok(&mut q, "a", 2, T0 + 2 * SEC);
    assert_eq!(dispatched(&out), vec![("a".into(), id(3), 1)]);
}

#[test]
fn priority_orders_heads_across_targets() {
    let mut q = Queue::new(Config {
        max_in_flight_per_agent: 1,
        ..config()
    });
    let a = agent("a");
    let mut n = 0;
    for (target, priority) in [
        ("t1", Priority::Low),
        ("t2", Priority::Normal),
        ("t3", Priority::High),
        ("t4", Priority::Normal),
    ] {
        n += 1;
        let mut t = task(n, "a", target);
        t.priority = priority;
        submit(&mut q, t, T0);
    }
    let out = q.agent_connected(&a, T0);
    assert_eq!(dispatched(&out), vec![("a".into(), id(3), 1)]);
    let out = run_ok(&mut q, "a", 3, T0);
    assert_eq!(dispatched(&out), vec![("a".into(), id(2), 1)]);
    let out = run_ok(&mut q, "a", 2, T0);
    assert_eq!(dispatched(&out), vec![("a".into(), id(4), 1)]);
    let out = run_ok(&mut q, "a", 4, T0);
    assert_eq!(dispatched(&out), vec![("a".into(), id(1), 1)]);
}

#[test]
fn in_flight_per_agent_is_capped() {
    let mut q = Queue::new(config());
    let a = agent("a");
    for n in 1..=6 {
        submit(&mut q, task(n, "a", &format!("t{n}")), T0);
    }
    let out = q.agent_connected(&a, T0);
    assert_eq!(out.dispatches().count(), 4);
    assert_eq!(q.agent_in_flight(&a), 4);
    // Running tasks hold their slot too.
    q.accepted(&a, id(1), 1, T0).unwrap();
    assert_eq!(q.agent_in_flight(&a), 4);
    assert!(q.tick(T0 + SEC).dispatches().next().is_none());
    let out = q
        .result(&a, id(1), 1, ResultSummary::ok(), T0 + SEC)
        .unwrap();
    assert_eq!(dispatched(&out), vec![("a".into(), id(5), 1)]);
    assert_eq!(q.agent_in_flight(&a), 4);
    // Other agents have their own slots.
    let b = agent("b");
    submit(&mut q, task(10, "b", "t1"), T0);
    let out = q.agent_connected(&b, T0 + SEC);
    assert_eq!(dispatched(&out), vec![("b".into(), id(10), 1)]);
}

// ---- connections and leases -------------------------------------------------------

#[test]
fn dispatch_only_to_connected_agents() {
    let mut q = Queue::new(config());
    let a = agent("a");
    let out = submit(&mut q, task(1, "a", "web"), T0);
    assert!(out.dispatches().next().is_none());
    assert!(q.tick(T0 + 60 * SEC).is_empty());
    assert_eq!(state(&q, 1), TaskState::Queued);
    let out = q.agent_connected(&a, T0 + 61 * SEC);
    assert_eq!(dispatched(&out), vec![("a".into(), id(1), 1)]);
    assert!(has(
        &out,
        &Effect::Notify {
            task: id(1),
            state: TaskState::Dispatched
        }
    ));
    let r = q.get(id(1)).unwrap();
    assert_eq!(r.state, TaskState::Dispatched);
    assert_eq!(r.dispatched_at, Some(T0 + 61 * SEC));
    assert_eq!(r.lease_until, Some(T0 + 71 * SEC));
    assert!(q.is_connected(&a));
    assert_eq!(q.connected_agents(), vec![a]);
}

#[test]
fn disconnect_clears_leases_and_reconnect_resends_the_same_attempt() {
    let mut q = Queue::new(config());
    let a = agent("a");
    q.agent_connected(&a, T0);
    submit(&mut q, task(1, "a", "web"), T0);
    submit(&mut q, task(2, "a", "db"), T0);
    q.accepted(&a, id(2), 1, T0).unwrap();
    let out = q.agent_disconnected(&a, T0 + SEC);
    assert_eq!(out.changed, vec![id(1)]);
    assert!(out.effects.is_empty());
    assert_eq!(q.get(id(1)).unwrap().lease_until, None);
    assert_eq!(state(&q, 1), TaskState::Dispatched);
    assert_eq!(state(&q, 2), TaskState::Running);
    assert!(!q.is_connected(&a));
    // Nothing is re-sent while it is away, even past the old lease.
    assert!(q.tick(T0 + 30 * SEC).dispatches().next().is_none());
    let out = q.agent_connected(&a, T0 + 31 * SEC);
    assert_eq!(dispatched(&out), vec![("a".into(), id(1), 1)]);
    assert_eq!(q.get(id(1)).unwrap().lease_until, Some(T0 + 41 * SEC));
    assert_eq!(q.get(id(1)).unwrap().dispatched_at, Some(T0));
}

#[test]
fn a_new_session_resends_dispatched_tasks_at_once() {
    let mut q = Queue::new(config());
    let a = agent("a");
    q.agent_connected(&a, T0);
    submit(&mut q, task(1, "a", "web"), T0);
    // The agent reconnects without a disconnect event first (its old session died).
    let out = q.agent_connected(&a, T0 + SEC);
    assert_eq!(dispatched(&out), vec![("a".into(), id(1), 1)]);
    assert_eq!(out.changed, vec![id(1)]);
}

#[test]
fn lease_expiry_resends_the_same_attempt() {
    let mut q = Queue::new(config());
    let a = agent("a");
    q.agent_connected(&a, T0);
    submit(&mut q, task(1, "a", "web"), T0);
    assert_eq!(q.next_wakeup(), Some(T0 + 10 * SEC));
    assert!(q.tick(T0 + 10 * SEC - 1).is_empty());
    let out = q.tick(T0 + 10 * SEC);
    assert_eq!(dispatched(&out), vec![("a".into(), id(1), 1)]);
    assert_eq!(out.changed, vec![id(1)]);
    assert_eq!(q.get(id(1)).unwrap().lease_until, Some(T0 + 20 * SEC));
    assert_eq!(q.get(id(1)).unwrap().updated_at, T0);
    // Accepted: no more re-sends.
    q.accepted(&a, id(1), 1, T0 + 11 * SEC).unwrap();
    assert!(q.tick(T0 + 25 * SEC).is_empty());
}

// ---- accepted and progress --------------------------------------------------------

#[test]
fn accepted_moves_dispatched_to_running_once() {
    let mut q = Queue::new(config());
    let a = agent("a");
    q.agent_connected(&a, T0);
    submit(&mut q, task(1, "a", "web"), T0);
    let out = q.accepted(&a, id(1), 1, T0 + 5).unwrap();
    assert_eq!(out.changed, vec![id(1)]);
    assert_eq!(
        out.effects,
        vec![Effect::Notify {
            task: id(1),
            state: TaskState::Running
        }]
    );
    let r = q.get(id(1)).unwrap();
    assert_eq!(
        (r.state, r.accepted_at, r.lease_until),
        (TaskState::Running, Some(T0 + 5), None)
    );
    assert!(q.accepted(&a, id(1), 1, T0 + 6).unwrap().is_empty());
}

#[test]
fn accepted_from_wrong_agent_or_attempt_is_refused() {
    let mut q = Queue::new(config());
    let a = agent("a");
    q.agent_connected(&a, T0);
    submit(&mut q, task(1, "a", "web"), T0);
    submit(&mut q, task(2, "b", "web"), T0);
    let before: Vec<TaskRecord> = q.records().cloned().collect();
    assert_eq!(
        q.accepted(&agent("b"), id(1), 1, T0),
        Err(QueueError::WrongAgent {
            task: id(1),
            agent: agent("b")
        })
    );
    assert_eq!(
        q.accepted(&a, id(1), 2, T0),
        Err(QueueError::StaleAttempt {
            task: id(1),
            attempt: 2,
            current: 1
        })
    );
    assert_eq!(
        q.accepted(&a, id(9), 1, T0),
        Err(QueueError::UnknownTask(id(9)))
    );
    assert_eq!(
        q.accepted(&agent("b"), id(2), 1, T0),
        Err(QueueError::NotDispatched(id(2)))
    );
    assert_eq!(q.records().cloned().collect::<Vec<_>>(), before);
}

#[test]
fn accepted_after_cancel_answers_with_a_cancel() {
    let mut q = Queue::new(config());
    let a = agent("a");
    q.agent_connected(&a, T0);
    submit(&mut q, task(1, "a", "web"), T0);
    q.cancel(id(1), T0).unwrap();
    let out = q.accepted(&a, id(1), 1, T0 + 1).unwrap();
    assert!(out.changed.is_empty());
    assert_eq!(
        out.effects,
        vec![Effect::SendCancel {
            agent: a.clone(),
            task: id(1)
        }]
    );
}

#[test]
fn accepted_after_success_is_already_finished() {
    let mut q = Queue::new(config());
    let a = agent("a");
    q.agent_connected(&a, T0);
    submit(&mut q, task(1, "a", "web"), T0);
    run_ok(&mut q, "a", 1, T0);
    assert_eq!(
        q.accepted(&a, id(1), 1, T0),
        Err(QueueError::AlreadyFinished {
            task: id(1),
            state: TaskState::Succeeded
        })
    );
}

#[test]
fn progress_never_changes_state() {
    let mut q = Queue::new(config());
    let a = agent("a");
    q.agent_connected(&a, T0);
    submit(&mut q, task(1, "a", "web"), T0);
    assert_eq!(q.progress(&a, id(1), 1), Ok(()));
    assert_eq!(state(&q, 1), TaskState::Dispatched);
    q.accepted(&a, id(1), 1, T0).unwrap();
    assert_eq!(q.progress(&a, id(1), 1), Ok(()));
    assert!(matches!(
        q.progress(&agent("x"), id(1), 1),
        Err(QueueError::WrongAgent { .. })
    ));
    assert!(matches!(
        q.progress(&a, id(1), 3),
        Err(QueueError::StaleAttempt { .. })
    ));
    assert_eq!(state(&q, 1), TaskState::Running);
}

// ---- expiry -----------------------------------------------------------------------

#[test]
fn queued_task_expires_at_tick() {
    let mut q = Queue::new(config());
    let mut t = task(1, "a", "web");
    t.expires_at = Some(T0 + 5 * SEC);
    submit(&mut q, t, T0);
    assert_eq!(q.next_wakeup(), Some(T0 + 5 * SEC));
    assert!(q.tick(T0 + 5 * SEC - 1).is_empty());
    let out = q.tick(T0 + 5 * SEC);
    assert_eq!(out.changed, vec![id(1)]);
    assert_eq!(
        out.effects,
        vec![Effect::Notify {
            task: id(1),
            state: TaskState::Expired
        }]
    );
    assert_eq!(q.get(id(1)).unwrap().updated_at, T0 + 5 * SEC);
    assert_eq!(q.next_wakeup(), None);
}

#[test]
fn dispatched_but_not_accepted_task_expires_with_a_cancel() {
    let mut q = Queue::new(config());
    let a = agent("a");
    q.agent_connected(&a, T0);
    let mut t = task(1, "a", "web");
    t.expires_at = Some(T0 + 5 * SEC);
    submit(&mut q, t, T0);
    submit(&mut q, task(2, "a", "web"), T0);
    assert_eq!(q.next_wakeup(), Some(T0 + 5 * SEC));
    let out = q.tick(T0 + 5 * SEC);
    assert_eq!(state(&q, 1), TaskState::Expired);
    assert!(has(
        &out,
        &Effect::SendCancel {
            agent: a.clone(),
            task: id(1)
        }
    ));
    // The target is free again: the next task goes.
    assert_eq!(dispatched(&out), vec![("a".into(), id(2), 1)]);
}

#[test]
fn no_dispatch_at_or_after_expires_at() {
    let mut q = Queue::new(config());
    let a = agent("a");
    let mut t = task(1, "a", "web");
    t.expires_at = Some(T0 + 5 * SEC);
    submit(&mut q, t, T0);
    // The agent connects exactly at expires_at, before any tick: no dispatch.
    let out = q.agent_connected(&a, T0 + 5 * SEC);
    assert!(out.dispatches().next().is_none());
    assert_eq!(state(&q, 1), TaskState::Expired);

    // A lease re-send is not made at expires_at either: the task expires instead.
    let mut t = task(2, "a", "db");
    t.expires_at = Some(T0 + 20 * SEC);
    submit(&mut q, t, T0 + 10 * SEC);
    assert_eq!(q.get(id(2)).unwrap().lease_until, Some(T0 + 20 * SEC));
    let out = q.tick(T0 + 20 * SEC);
    assert!(out.dispatches().next().is_none());
    assert_eq!(state(&q, 2), TaskState::Expired);
}

#[test]
fn submit_past_expiry_is_created_expired() {
    let mut q = Queue::new(config());
    q.agent_connected(&agent("a"), T0);
    let mut t = task(1, "a", "web");
    t.expires_at = Some(T0);
    let out = submit(&mut q, t, T0);
    assert!(out.dispatches().next().is_none());
    assert_eq!(state(&q, 1), TaskState::Expired);
}

#[test]
fn running_tasks_do_not_expire() {
    let mut q = Queue::new(config());
    let a = agent("a");
    q.agent_connected(&a, T0);
    let mut t = task(1, "a", "web");
    t.expires_at = Some(T0 + 5 * SEC);
    submit(&mut q, t, T0);
    q.accepted(&a, id(1), 1, T0 + SEC).unwrap();
    q.tick(T0 + 6 * SEC);
    assert_eq!(state(&q, 1), TaskState::Running);
}

// ---- results and retries ----------------------------------------------------------

#[test]
fn success_result_succeeds_and_is_acked() {
    let mut q = Queue::new(config());
    let a = agent("a");
    q.agent_connected(&a, T0);
    submit(&mut q, task(1, "a", "web"), T0);
    q.accepted(&a, id(1), 1, T0).unwrap();
    let out = q
        .result(&a, id(1), 1, ResultSummary::ok(), T0 + SEC)
        .unwrap();
    assert_eq!(out.changed, vec![id(1)]);
    assert!(has(
        &out,
        &Effect::AckResult {
            agent: a.clone(),
            task: id(1),
            attempt: 1
        }
    ));
    assert!(has(
        &out,
        &Effect::Notify {
            task: id(1),
            state: TaskState::Succeeded
        }
    ));
    let r = q.get(id(1)).unwrap();
    assert_eq!(r.state, TaskState::Succeeded);
    assert_eq!(
        r.last_result,
        Some(RecordedResult {
            attempt: 1,
            at: T0 + SEC,
            summary: ResultSummary::ok()
        })
    );
    assert_eq!(q.agent_in_flight(&a), 0);
}

#[test]
fn retriable_failure_retries_with_exponential_capped_backoff() {
    let mut q = Queue::new(Config {
        retry_base: Duration::from_secs(1),
        retry_max: Duration::from_secs(3),
        ..config()
    });
    let a = agent("a");
    q.agent_connected(&a, T0);
    let mut t = task(1, "a", "web");
    t.max_attempts = 4;
    submit(&mut q, t, T0);
    submit(&mut q, task(2, "a", "web"), T0);
    let mut now = T0;
    for (attempt, backoff) in [(1, SEC), (2, 2 * SEC), (3, 3 * SEC)] {
        let out = q
            .result(
                &a,
                id(1),
                attempt,
                ResultSummary::failed("pull timeout", true),
                now,
            )
            .unwrap();
        assert!(out.dispatches().next().is_none(), "{out:?}");
        assert!(has(
            &out,
            &Effect::Notify {
                task: id(1),
                state: TaskState::Queued
            }
        ));
        let r = q.get(id(1)).unwrap();
        assert_eq!(r.state, TaskState::Queued);
        assert_eq!(r.attempt, attempt + 1);
        assert_eq!(r.not_before, Some(now + backoff));
        // The task behind it waits: the retry keeps the head of the target.
        assert_eq!(state(&q, 2), TaskState::Queued);
        assert_eq!(q.next_wakeup(), Some(now + backoff));
        assert!(q.tick(now + backoff - 1).is_empty());
        let out = q.tick(now + backoff);
        assert_eq!(dispatched(&out), vec![("a".into(), id(1), attempt + 1)]);
        now += backoff;
    }
    // The fourth attempt is the last: its retriable failure fails the task.
    let out = q
        .result(&a, id(1), 4, ResultSummary::failed("again", true), now)
        .unwrap();
    assert_eq!(state(&q, 1), TaskState::Failed);
    assert_eq!(dispatched(&out), vec![("a".into(), id(2), 1)]);
}

#[test]
fn non_retriable_failure_fails() {
    let mut q = Queue::new(config());
    let a = agent("a");
    q.agent_connected(&a, T0);
    let mut t = task(1, "a", "web");
    t.max_attempts = 3;
    submit(&mut q, t, T0);
    q.result(&a, id(1), 1, ResultSummary::failed("bad digest", false), T0)
        .unwrap();
    let r = q.get(id(1)).unwrap();
    assert_eq!((r.state, r.attempt), (TaskState::Failed, 1));
    assert_eq!(
        r.last_result.as_ref().unwrap().summary.error.as_deref(),
        Some("bad digest")
    );
}

#[test]
fn no_retry_scheduled_at_or_past_expires_at() {
    let mut q = Queue::new(Config {
        retry_base: Duration::from_secs(10),
        ..config()
    });
    let a = agent("a");
    q.agent_connected(&a, T0);
    let mut t = task(1, "a", "web");
    t.max_attempts = 5;
    t.expires_at = Some(T0 + 10 * SEC);
    submit(&mut q, t.clone(), T0);
    // T0 + 10 s backoff = expires_at: the retry could never be dispatched.
    q.result(&a, id(1), 1, ResultSummary::failed("x", true), T0)
        .unwrap();
    assert_eq!(state(&q, 1), TaskState::Failed);

    let mut t2 = t;
    t2.id = id(2);
    t2.target = "db".into();
    t2.expires_at = Some(T0 + 10 * SEC + 1);
    submit(&mut q, t2, T0);
    q.result(&a, id(2), 1, ResultSummary::failed("x", true), T0)
        .unwrap();
    assert_eq!(state(&q, 2), TaskState::Queued);
    assert_eq!(q.get(id(2)).unwrap().not_before, Some(T0 + 10 * SEC));
}

#[test]
fn repeated_result_changes_nothing_but_is_acked() {
    let mut q = Queue::new(config());
    let a = agent("a");
    q.agent_connected(&a, T0);
    let mut t = task(1, "a", "web");
    t.max_attempts = 2;
    submit(&mut q, t, T0);
    q.result(&a, id(1), 1, ResultSummary::failed("x", true), T0)
        .unwrap();
    let before: Vec<TaskRecord> = q.records().cloned().collect();
    let ack = Effect::AckResult {
        agent: a.clone(),
        task: id(1),
        attempt: 1,
    };
    // The same result again (its ack was lost), even saying something else.
    for summary in [ResultSummary::failed("x", true), ResultSummary::ok()] {
        let out = q.result(&a, id(1), 1, summary, T0 + 1).unwrap();
        assert!(out.changed.is_empty());
        assert_eq!(out.effects, vec![ack.clone()]);
    }
    assert_eq!(q.records().cloned().collect::<Vec<_>>(), before);
    // A result for a finished task: acked, no change.
    q.tick(T0 + 10 * SEC);
    q.result(&a, id(1), 2, ResultSummary::ok(), T0 + 10 * SEC)
        .unwrap();
    let out = q
        .result(
            &a,
            id(1),
            2,
            ResultSummary::failed("late", false),
            T0 + 11 * SEC,
        )
        .unwrap();
    assert!(out.changed.is_empty());
    assert_eq!(state(&q, 1), TaskState::Succeeded);
}

#[test]
fn result_from_another_agent_or_future_attempt_is_refused_without_ack() {
    let mut q = Queue::new(config());
    let a = agent("a");
    q.agent_connected(&a, T0);
    submit(&mut q, task(1, "a", "web"), T0);
    submit(&mut q, task(2, "a", "db"), T0);
    let before: Vec<TaskRecord> = q.records().cloned().collect();
    assert!(matches!(
        q.result(&agent("b"), id(1), 1, ResultSummary::ok(), T0),
        Err(QueueError::WrongAgent { .. })
    ));
    assert!(matches!(
        q.result(&a, id(1), 2, ResultSummary::ok(), T0),
        Err(QueueError::StaleAttempt { .. })
    ));
    assert_eq!(
        q.result(&a, id(7), 1, ResultSummary::ok(), T0),
        Err(QueueError::UnknownTask(id(7)))
    );
    assert_eq!(q.records().cloned().collect::<Vec<_>>(), before);
}

#[test]
fn result_for_a_queued_attempt_is_refused() {
    let mut q = Queue::new(config());
    submit(&mut q, task(1, "a", "web"), T0);
    assert_eq!(
        q.result(&agent("a"), id(1), 1, ResultSummary::ok(), T0),
        Err(QueueError::NotDispatched(id(1)))
    );
}

#[test]
fn result_while_still_dispatched_is_accepted() {
    let mut q = Queue::new(config());
    let a = agent("a");
    q.agent_connected(&a, T0);
    submit(&mut q, task(1, "a", "web"), T0);
    // The Accepted was lost.
    let out = q.result(&a, id(1), 1, ResultSummary::ok(), T0).unwrap();
    assert_eq!(out.changed, vec![id(1)]);
    assert_eq!(state(&q, 1), TaskState::Succeeded);
    assert_eq!(q.get(id(1)).unwrap().lease_until, None);
    assert_eq!(q.next_wakeup(), None);
}

// ---- cancel -----------------------------------------------------------------------

#[test]
fn cancel_queued_task() {
    let mut q = Queue::new(config());
    submit(&mut q, task(1, "a", "web"), T0);
    let out = q.cancel(id(1), T0 + 1).unwrap();
    assert_eq!(out.changed, vec![id(1)]);
    assert_eq!(
        out.effects,
        vec![Effect::Notify {
            task: id(1),
            state: TaskState::Cancelled
        }]
    );
    assert_eq!(q.get(id(1)).unwrap().updated_at, T0 + 1);
}

#[test]
fn cancel_dispatched_task_sends_cancel_and_frees_the_target() {
    let mut q = Queue::new(config());
    let a = agent("a");
    q.agent_connected(&a, T0);
    submit(&mut q, task(1, "a", "web"), T0);
    submit(&mut q, task(2, "a", "web"), T0);
    let out = q.cancel(id(1), T0).unwrap();
    assert_eq!(state(&q, 1), TaskState::Cancelled);
    assert!(has(
        &out,
        &Effect::SendCancel {
            agent: a.clone(),
            task: id(1)
        }
    ));
    assert_eq!(dispatched(&out), vec![("a".into(), id(2), 1)]);
}

#[test]
fn cancel_running_task_requests_and_the_result_decides() {
    let mut q = Queue::new(config());
    let a = agent("a");
    q.agent_connected(&a, T0);
    for n in [1, 2] {
        let mut t = task(n, "a", &format!("t{n}"));
        t.max_attempts = 3;
        submit(&mut q, t, T0);
        q.accepted(&a, id(n), 1, T0).unwrap();
    }
    let cancel = |n| Effect::SendCancel {
        agent: agent("a"),
        task: id(n),
    };
    let out = q.cancel(id(1), T0 + 1).unwrap();
    assert_eq!(out.changed, vec![id(1)]);
    assert_eq!(out.effects, vec![cancel(1)]);
    let r = q.get(id(1)).unwrap();
    assert_eq!((r.state, r.cancel_requested), (TaskState::Running, true));
    // Again: the cancel is re-sent, nothing changes.
    let out = q.cancel(id(1), T0 + 2).unwrap();
    assert!(out.changed.is_empty());
    assert_eq!(out.effects, vec![cancel(1)]);
    // The agent aborted and rolled back: cancelled, not retried though retriable.
    q.result(&a, id(1), 1, ResultSummary::failed("aborted", true), T0 + 3)
        .unwrap();
    assert_eq!(state(&q, 1), TaskState::Cancelled);
    // The other one finished before it could abort: succeeded.
    q.cancel(id(2), T0 + 4).unwrap();
    q.result(&a, id(2), 1, ResultSummary::ok(), T0 + 5).unwrap();
    assert_eq!(state(&q, 2), TaskState::Succeeded);
}

#[test]
fn cancel_finished_or_unknown_task_is_an_error() {
    let mut q = Queue::new(config());
    submit(&mut q, task(1, "a", "web"), T0);
    q.cancel(id(1), T0).unwrap();
    assert_eq!(
        q.cancel(id(1), T0),
        Err(QueueError::AlreadyFinished {
            task: id(1),
            state: TaskState::Cancelled
        })
    );
    assert_eq!(q.cancel(id(2), T0), Err(QueueError::UnknownTask(id(2))));
}

// ---- deadline ---------------------------------------------------------------------

#[test]
fn running_task_past_its_deadline_fails() {
    let mut q = Queue::new(Config {
        deadline_grace: Duration::from_secs(30),
        ..config()
    });
    let a = agent("a");
    q.agent_connected(&a, T0);
    let mut t = task(1, "a", "web");
    t.max_attempts = 3;
    submit(&mut q, t, T0);
    submit(&mut q, task(2, "a", "web"), T0);
    q.accepted(&a, id(1), 1, T0 + SEC).unwrap();
    let deadline = T0 + SEC + 60 * SEC + 30 * SEC;
    assert_eq!(q.next_wakeup(), Some(deadline));
    // The agent is away: the deadline holds all the same.
    q.agent_disconnected(&a, T0 + 2 * SEC);
    assert!(q.tick(deadline - 1).is_empty());
    let out = q.tick(deadline);
    assert_eq!(out.changed, vec![id(1)]);
    let r = q.get(id(1)).unwrap();
    assert_eq!(r.state, TaskState::Failed);
    let result = r.last_result.as_ref().unwrap();
    assert_eq!((result.attempt, result.at), (1, deadline));
    assert!(!result.summary.retriable);
    assert_eq!(
        result.summary.error.as_deref(),
        Some("agent did not report within 90s of accepting the task (timeout 60s + grace 30s)")
    );
    // A late result is acknowledged and changes nothing.
    let out = q
        .result(&a, id(1), 1, ResultSummary::ok(), deadline + 1)
        .unwrap();
    assert!(out.changed.is_empty());
    assert_eq!(out.effects.len(), 1);
    // The next task goes when the agent is back.
    let out = q.agent_connected(&a, deadline + 2);
    assert_eq!(dispatched(&out), vec![("a".into(), id(2), 1)]);
}

// ---- queries ----------------------------------------------------------------------

#[test]
fn next_wakeup_is_the_earliest_timed_change() {
    let mut q = Queue::new(Config {
        retry_base: Duration::from_secs(3),
        ..config()
    });
    let a = agent("a");
    assert_eq!(q.next_wakeup(), None);
    let mut t = task(1, "a", "t1");
    t.expires_at = Some(T0 + 100 * SEC);
    submit(&mut q, t, T0);
    assert_eq!(q.next_wakeup(), Some(T0 + 100 * SEC));
    q.agent_connected(&a, T0);
    assert_eq!(q.next_wakeup(), Some(T0 + 10 * SEC)); // lease
    let mut t = task(2, "a", "t2");
    t.max_attempts = 2;
    submit(&mut q, t, T0);
    q.result(&a, id(2), 1, ResultSummary::failed("x", true), T0 + SEC)
        .unwrap();
    assert_eq!(q.next_wakeup(), Some(T0 + 4 * SEC)); // backoff
    q.accepted(&a, id(1), 1, T0 + 2 * SEC).unwrap();
    q.cancel(id(2), T0 + 2 * SEC).unwrap();
    // Running: its deadline (accepted + 60 s + 60 s grace).
    assert_eq!(q.next_wakeup(), Some(T0 + 122 * SEC));
}

#[test]
fn list_filters_by_state_agent_target_and_pages() {
    let mut q = Queue::new(config());
    q.agent_connected(&agent("a"), T0);
    submit(&mut q, task(1, "a", "web"), T0);
    submit(&mut q, task(2, "a", "web"), T0);
    submit(&mut q, task(3, "b", "web"), T0);
    submit(&mut q, task(4, "a", "db"), T0);
    let ids = |v: Vec<&TaskRecord>| v.into_iter().map(|t| t.id).collect::<Vec<_>>();
    assert_eq!(
        ids(q.list(&ListFilter::default())),
        vec![id(1), id(2), id(3), id(4)]
    );
    let queued = ListFilter {
        state: Some(TaskState::Queued),
        ..Default::default()
    };
    assert_eq!(ids(q.list(&queued)), vec![id(2), id(3)]);
    let of_a = ListFilter {
        agent: Some(agent("a")),
        target: Some("web".into()),
        ..Default::default()
    };
    assert_eq!(ids(q.list(&of_a)), vec![id(1), id(2)]);
    let page = ListFilter {
        after_seq: Some(1),
        limit: Some(2),
        ..Default::default()
    };
    assert_eq!(ids(q.list(&page)), vec![id(2), id(3)]);
    assert_eq!(q.agent_in_flight(&agent("a")), 2);
    assert_eq!(q.agent_in_flight(&agent("b")), 0);
    assert_eq!(q.count(TaskState::Dispatched), 2);
}

#[test]
fn task_state_names_round_trip() {
    for s in TaskState::ALL {
        assert_eq!(s.as_str().parse::<TaskState>(), Ok(s));
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            format!("\"{}\"", s.as_str())
        );
    }
    assert!("done".parse::<TaskState>().is_err());
    assert_eq!(serde_json::to_string(&Priority::High).unwrap(), "\"high\"");
}

#[test]
fn outcome_merge_keeps_changed_unique() {
    let mut a = Outcome {
        changed: vec![id(1), id(2)],
        effects: vec![],
    };
    a.merge(Outcome {
        changed: vec![id(2), id(3)],
        effects: vec![Effect::Notify {
            task: id(3),
            state: TaskState::Queued,
        }],
    });
    assert_eq!(a.changed, vec![id(1), id(2), id(3)]);
    assert_eq!(a.effects.len(), 1);
}

// ---- persistence ------------------------------------------------------------------

#[test]
fn records_round_trip_through_json_and_postcard_and_restore() {
    let mut q = Queue::new(config());
    let a = agent("a");
    q.agent_connected(&a, T0);
    let mut t = task(1, "a", "web");
    t.idempotency_key = Some("k".into());
    t.expires_at = Some(T0 + 100 * SEC);
    t.max_attempts = 3;
    submit(&mut q, t, T0);
    submit(&mut q, task(2, "a", "web"), T0);
    submit(&mut q, task(3, "a", "db"), T0);
    q.accepted(&a, id(3), 1, T0).unwrap();
    q.result(&a, id(1), 1, ResultSummary::failed("flaky", true), T0)
        .unwrap();
    let records: Vec<TaskRecord> = q.records().cloned().collect();
    let json = serde_json::to_string(&records).unwrap();
    let from_json: Vec<TaskRecord> = serde_json::from_str(&json).unwrap();
    assert_eq!(from_json, records);
    let bytes = postcard::to_allocvec(&records).unwrap();
    let from_postcard: Vec<TaskRecord> = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(from_postcard, records);

    let mut r = Queue::restore(from_postcard.into_iter().rev(), config()).unwrap();
    r.check_consistency();
    assert_eq!(r.records().cloned().collect::<Vec<_>>(), records);
    assert!(!r.is_connected(&a));
    assert_eq!(r.agent_in_flight(&a), 1);
    // Both behave the same from here (for the original, a reconnect).
    let later = T0 + 5 * SEC;
    assert_eq!(r.agent_connected(&a, later), q.agent_connected(&a, later));
    assert_eq!(r.tick(later + 20 * SEC), q.tick(later + 20 * SEC));
    assert_eq!(
        r.records().cloned().collect::<Vec<_>>(),
        q.records().cloned().collect::<Vec<_>>()
    );
    // Sequence numbers continue after the restored ones.
    submit(&mut r, task(4, "a", "x"), later);
    assert_eq!(r.get(id(4)).unwrap().seq, 4);
}

#[test]
fn evict_finished_forgets_old_finished_tasks_and_their_keys() {
    let mut q = Queue::new(config());
    let mut t = task(1, "a", "web");
    t.idempotency_key = Some("k".into());
    submit(&mut q, t.clone(), T0);
    submit(&mut q, task(2, "a", "web"), T0);
    submit(&mut q, task(3, "a", "db"), T0);
    q.cancel(id(1), T0 + 1).unwrap();
    q.cancel(id(3), T0 + 5).unwrap();
    assert!(q.evict_finished(T0 + 1, 10).is_empty());
    assert_eq!(q.evict_finished(T0 + 10, 1), vec![id(1)]);
    q.check_consistency();
    assert_eq!(q.get(id(1)), None);
    assert_eq!(q.find_by_key("ci", "k"), None);
    assert_eq!(q.evict_finished(T0 + 10, 10), vec![id(3)]);
    assert_eq!(q.len(), 1);
    // The key is free again.
    t.id = id(5);
    submit(&mut q, t, T0 + 20);
}

#[test]
fn evict_finished_where_forgets_only_the_selected_kinds() {
    let mut q = Queue::new(config());
    let mut read = task(1, "a", "web");
    read.kind = "inspect".into();
    submit(&mut q, task(2, "a", "db"), T0);
    submit(&mut q, read, T0);
    q.cancel(id(2), T0 + 1).unwrap();
    q.cancel(id(1), T0 + 2).unwrap();
    let inspect = |r: &TaskRecord| r.kind == "inspect";
    // Too recent, then selected past the older deploy that is kept.
    assert!(q.evict_finished_where(T0 + 2, 10, inspect).is_empty());
    assert_eq!(q.evict_finished_where(T0 + 10, 10, inspect), vec![id(1)]);
    q.check_consistency();
    assert!(q.get(id(1)).is_none());
    assert!(q.get(id(2)).is_some());
    assert!(q.evict_finished_where(T0 + 10, 10, inspect).is_empty());
}

// ---- scale ------------------------------------------------------------------------

/// 100k tasks over 10k agents (plus 10k on one target and 10k targets of one agent),
/// dispatched and run to completion, with expiries and leases in the timers. Nothing
/// here may be quadratic; in release it runs well under a second.
#[test]
fn scale_100k_tasks_10k_agents() {
    let start = std::time::Instant::now();
    let mut q = Queue::new(config());
    let mut n: u128 = 0;
    let mut submit_fast = |q: &mut Queue, agent_name: String, target: String, now: u64| {
        n += 1;
        let mut t = task(n, "x", "x");
        t.agent = AgentId(agent_name);
        t.target = target;
        t.expires_at = Some(now + 3_600 * SEC);
        t.priority = [Priority::Low, Priority::Normal, Priority::High][(n % 3) as usize];
        q.submit(t, now).expect("submit");
    };
    for i in 0..80_000u32 {
        submit_fast(
            &mut q,
            format!("agent-{}", i % 10_000),
            format!("t{}", i % 3),
            T0,
        );
    }
    for i in 0..10_000u32 {
        submit_fast(&mut q, "one-target".into(), "web".into(), T0 + u64::from(i));
    }
    for i in 0..10_000u32 {
        submit_fast(&mut q, "many-targets".into(), format!("t{i}"), T0);
    }
    assert_eq!(q.len(), 100_000);
    let mut now = T0 + 20 * SEC;
    let mut pending: Vec<(AgentId, TaskId, u32)> = Vec::new();
    let mut agents: Vec<AgentId> = (0..10_000).map(|i| agent(&format!("agent-{i}"))).collect();
    agents.push(agent("one-target"));
    agents.push(agent("many-targets"));
    for a in &agents {
        let out = q.agent_connected(a, now);
        pending.extend(out.dispatches().map(|(a, t, n)| (a.clone(), t, n)));
    }
    // One lease expiry round for everything in flight.
    now += 10 * SEC;
    let out = q.tick(now);
    assert_eq!(out.dispatches().count(), pending.len());
    let mut done = 0;
    while let Some((a, t, attempt)) = pending.pop() {
        q.accepted(&a, t, attempt, now).expect("accepted");
        let out = q
            .result(&a, t, attempt, ResultSummary::ok(), now)
            .expect("result");
        pending.extend(out.dispatches().map(|(a, t, n)| (a.clone(), t, n)));
        done += 1;
        now += 1;
    }
    assert_eq!(done, 100_000);
    assert_eq!(q.count(TaskState::Succeeded), 100_000);
    assert_eq!(q.next_wakeup(), None);
    let elapsed = start.elapsed();
    eprintln!("scale_100k_tasks_10k_agents: {elapsed:?}");
    if !cfg!(debug_assertions) {
        assert!(elapsed < Duration::from_secs(2), "too slow: {elapsed:?}");
    }
}
