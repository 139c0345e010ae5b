//! `/v1/tasks`: submit, list, show, cancel, and the Server-Sent Events of one task.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{task_id, Auth, RawBody};
use super::ApiState;
use crate::directory::Action;
use crate::engine::{Engine, SubmitRequest, TaskEvent, TaskView};
use crate::queue::{AgentId, ListFilter, Submission, TaskState};

/// `POST /v1/tasks`: 201 with the new task, 200 with the existing one for a repeated
/// idempotency key and the same payload.
pub(super) async fn submit(
    State(state): State<ApiState>,
    auth: Auth,
    body: RawBody,
) -> Result<Response, ApiError> {
    let principal = auth.require(Action::SubmitTask)?;
    let request: SubmitRequest = body.parse()?;
    // The engine records the `task.submit` audit entry in the task's own batch.
    let (submission, task) = state.app.engine.submit(request, &principal.actor()).await?;
    let status = match submission {
        Submission::Created(_) => StatusCode::CREATED,
        Submission::Existing(_) | Submission::Conflict(_) => StatusCode::OK,
    };
    let location = format!("/v1/tasks/{}", task.id);
    Ok((status, [(header::LOCATION, location)], Json(task)).into_response())
}

/// Query of `GET /v1/tasks`.
#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    state: Option<String>,
    agent: Option<String>,
    target: Option<String>,
    limit: Option<String>,
}

/// `GET /v1/tasks?state=S&agent=A&target=T&limit=N`.
pub(super) async fn list(
    State(state): State<ApiState>,
    auth: Auth,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<TaskView>>, ApiError> {
    auth.require(Action::ReadTasks)?;
    let Query(query) =
        query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let task_state = query
        .state
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<TaskState>()
                .map_err(|e| ApiError::bad_request(e.to_string()).with_field("state"))
        })
        .transpose()?;
    let limit = query
        .limit
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>().map_err(|_| {
                ApiError::bad_request(format!("limit: {s:?} is not a non-negative integer"))
                    .with_field("limit")
            })
        })
        .transpose()?;
    let filter = ListFilter {
        state: task_state,
        agent: query.agent.filter(|a| !a.is_empty()).map(AgentId::new),
        target: query.target.filter(|t| !t.is_empty()),
        after_seq: None,
        limit,
    };
    Ok(Json(state.app.engine.list(&filter).await))
}

/// `GET /v1/tasks/{id}`.
pub(super) async fn get(
    State(state): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    auth.require(Action::ReadTasks)?;
    let id = task_id(&id)?;
    state
        .app
        .engine
        .get(id)
        .await
        .map(Json)
        .ok_or_else(|| unknown_task(id))
}

fn unknown_task(id: Uuid) -> ApiError {
    ApiError::not_found(format!(
        "no task has the id {id}; `wharf task list` shows the tasks"
    ))
}

/// `GET /v1/tasks/{id}/evidence`: the signed `wharf.evidence/v1` document of a finished
/// deploy or rollback, exactly as core signed and stored it.
pub(super) async fn evidence(
    State(state): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    auth.require(Action::ReadTasks)?;
    let id = task_id(&id)?;
    // Read under the engine's lock, so a terminal state seen here is durable, and with it
    // the evidence written in the same batch.
    let task = state
        .app
        .engine
        .get(id)
        .await
        .ok_or_else(|| unknown_task(id))?;
    match crate::evidence::read(&*state.app.store, id) {
        Ok(Some(bytes)) => {
            Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
        }
        Ok(None) => Err(ApiError::not_found(format!(
            "task {id} has no evidence record: {}",
            crate::evidence::missing_reason(task.kind.as_str(), task.state)
        ))),
        Err(error) => {
            tracing::error!(%id, %error, "cannot read an evidence record");
            Err(ApiError::internal(
                "cannot read the evidence record from the store",
            ))
        }
    }
}

/// `POST /v1/tasks/{id}/cancel`.
pub(super) async fn cancel(
    State(state): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Json<TaskView>, ApiError> {
    let principal = auth.require(Action::CancelTask)?;
    let id = task_id(&id)?;
    // The engine records the `task.cancel` audit entry in the change's own batch.
    let task = state.app.engine.cancel(id, &principal.actor()).await?;
    Ok(Json(task))
}

/// `GET /v1/tasks/{id}/events`: `state` and `progress` events, then `done` with the task
/// once it is terminal.
pub(super) async fn events(
    State(state): State<ApiState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    auth.require(Action::ReadTasks)?;
    let id = task_id(&id)?;
    // The task and exactly the events after it (see `Engine::watch`).
    let (task, events) = state
        .app
        .engine
        .watch(id)
        .await
        .ok_or_else(|| unknown_task(id))?;
    let mut watch = TaskWatch {
        id,
        engine: state.app.engine.clone(),
        events,
        shutdown: state.shutdown.clone(),
        last_state: None,
        pending: VecDeque::new(),
        finished: false,
    };
    watch.show(&task);
    let stream = futures_util::stream::unfold(watch, |mut watch| async move {
        watch.next().await.map(|event| (Ok(event), watch))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The state of one SSE stream.
struct TaskWatch {
    id: Uuid,
    engine: Engine,
    events: broadcast::Receiver<TaskEvent>,
    shutdown: watch::Receiver<bool>,
    last_state: Option<TaskState>,
    pending: VecDeque<Event>,
    finished: bool,
}

impl TaskWatch {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            if self.finished {
                return None;
            }
            tokio::select! {
                () = super::shutdown_signalled(&mut self.shutdown) => return None,
                received = self.events.recv() => match received {
                    Ok(event) if event.task_id() == self.id => self.on_event(event).await,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => self.resync().await,
                    Err(RecvError::Closed) => return None,
                },
            }
        }
    }

    /// Every state change is shown in order (the receiver holds only changes after the
    /// first read); a terminal one re-reads the task for the final `done`.
    async fn on_event(&mut self, event: TaskEvent) {
        match &event {
            TaskEvent::State { state, .. } if state.is_terminal() => self.resync().await,
            TaskEvent::State { state, .. } => {
                if self.last_state != Some(*state) {
                    self.last_state = Some(*state);
                    self.pending.push_back(json_event("state", &event));
                }
            }
            TaskEvent::Progress { .. } => self.pending.push_back(json_event("progress", &event)),
        }
    }

    /// Re-reads the task (after missed events, or to send the final one).
    async fn resync(&mut self) {
        match self.engine.get(self.id).await {
            Some(task) => self.show(&task),
            None => self.finished = true,
        }
    }

    /// Queues a `state` event if the task's state is news, and `done` if it is terminal.
    fn show(&mut self, task: &TaskView) {
        if self.last_state != Some(task.state) {
            self.last_state = Some(task.state);
            let event = TaskEvent::State {
                task_id: task.id,
                state: task.state,
            };
            self.pending.push_back(json_event("state", &event));
        }
        if task.state.is_terminal() {
            self.pending.push_back(json_event("done", task));
            self.finished = true;
        }
    }
}

fn json_event<T: serde::Serialize>(name: &str, data: &T) -> Event {
    let event = Event::default().event(name);
    match serde_json::to_string(data) {
        Ok(json) => event.data(json),
        Err(e) => event.data(json!({"error": e.to_string()}).to_string()),
    }
}
