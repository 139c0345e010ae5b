//! Integration tests of `wharf-protocol`: round trips of every message (property tests),
//! image reference tables and frame codec edge cases.

mod codec;
mod images;
mod roundtrip;

/// Shared generators: every message variant and every task payload variant can be forced,
/// so coverage does not depend on luck.
mod gen {
    use arbitrary::{Arbitrary, Unstructured};
    use wharf_protocol::*;

    /// Number of [`Message`] variants.
    pub const MESSAGE_VARIANTS: usize = 10;
    /// Number of [`TaskPayload`] variants.
    pub const PAYLOAD_VARIANTS: usize = 8;

    /// Index of a message's variant. The match is exhaustive: a new variant fails to compile
    /// here until the generators cover it.
    pub fn message_index(m: &Message) -> usize {
        match m {
            Message::Hello(_) => 0,
            Message::Welcome(_) => 1,
            Message::Reject(_) => 2,
            Message::Heartbeat(_) => 3,
            Message::Assign(_) => 4,
            Message::Accepted(_) => 5,
            Message::Progress(_) => 6,
            Message::Result(_) => 7,
            Message::ResultAck(_) => 8,
            Message::Cancel(_) => 9,
        }
    }

    /// Index of a payload's variant (exhaustive, like [`message_index`]).
    pub fn payload_index(p: &TaskPayload) -> usize {
        match p {
            TaskPayload::Deploy(_) => 0,
            TaskPayload::Rollback(_) => 1,
            TaskPayload::HealthCheck(_) => 2,
            TaskPayload::Inspect => 3,
            TaskPayload::WriteSticker(_) => 4,
            TaskPayload::ReadSticker => 5,
            TaskPayload::ComposeDeploy(_) => 6,
            TaskPayload::ComposeRollback(_) => 7,
        }
    }

    /// A payload of the given variant, its contents drawn from `u`.
    pub fn payload(variant: usize, u: &mut Unstructured<'_>) -> arbitrary::Result<TaskPayload> {
        Ok(match variant % PAYLOAD_VARIANTS {
            0 => TaskPayload::Deploy(u.arbitrary()?),
            1 => TaskPayload::Rollback(u.arbitrary()?),
            2 => TaskPayload::HealthCheck(u.arbitrary()?),
            3 => TaskPayload::Inspect,
            4 => TaskPayload::WriteSticker(u.arbitrary()?),
            5 => TaskPayload::ReadSticker,
            6 => TaskPayload::ComposeDeploy(u.arbitrary()?),
            _ => TaskPayload::ComposeRollback(u.arbitrary()?),
        })
    }

    /// A task with the given payload variant.
    pub fn task(payload_variant: usize, u: &mut Unstructured<'_>) -> arbitrary::Result<AgentTask> {
        let mut t = AgentTask::arbitrary(u)?;
        t.payload = payload(payload_variant, u)?;
        Ok(t)
    }

    /// A message of the given variant (and, for `Assign`, payload variant).
    pub fn message(
        variant: usize,
        payload_variant: usize,
        u: &mut Unstructured<'_>,
    ) -> arbitrary::Result<Message> {
        Ok(match variant % MESSAGE_VARIANTS {
            0 => Message::Hello(u.arbitrary()?),
            1 => Message::Welcome(u.arbitrary()?),
            2 => Message::Reject(u.arbitrary()?),
            3 => Message::Heartbeat(u.arbitrary()?),
            4 => Message::Assign(task(payload_variant, u)?),
            5 => Message::Accepted(u.arbitrary()?),
            6 => Message::Progress(u.arbitrary()?),
            7 => Message::Result(u.arbitrary()?),
            8 => Message::ResultAck(u.arbitrary()?),
            _ => Message::Cancel(u.arbitrary()?),
        })
    }

    /// Runs `f` on `bytes`, repeating the input (then padding it with zeros) while it is too
    /// short for the value being built.
    pub fn with_enough<T>(
        bytes: &[u8],
        f: impl Fn(&mut Unstructured<'_>) -> arbitrary::Result<T>,
    ) -> T {
        let mut data = bytes.to_vec();
        for _ in 0..4 {
            if let Ok(v) = f(&mut Unstructured::new(&data)) {
                return v;
            }
            data.extend_from_slice(bytes);
            data.extend_from_slice(&[0x11; 64]);
        }
        data.extend_from_slice(&[0; 4096]);
        f(&mut Unstructured::new(&data)).expect("4 KiB of zeros is enough for any value")
    }

    /// An arbitrary value built from raw bytes (see [`with_enough`]).
    pub fn arb<T: for<'a> Arbitrary<'a>>(bytes: &[u8]) -> T {
        with_enough(bytes, |u| T::arbitrary(u))
    }

    /// A message built from raw bytes (variant forced by the caller; see [`with_enough`]).
    pub fn message_from(variant: usize, payload_variant: usize, bytes: &[u8]) -> Message {
        with_enough(bytes, |u| message(variant, payload_variant, u))
    }
}
