//! Encode → decode equality for every message, by postcard body, by frame through the
//! sans-IO decoder (in random chunks), by the async reader, and in JSON.

use proptest::prelude::*;
use wharf_protocol::*;

use crate::gen;

fn bytes() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..2048)
}

/// Feeds `stream` to a decoder in chunks of the given sizes (cycled), collecting messages.
fn decode_chunked(stream: &[u8], chunks: &[usize], max: u32) -> Vec<Message> {
    let mut d = FrameDecoder::with_max(max);
    let mut out = Vec::new();
    let mut rest = stream;
    let mut sizes = chunks.iter().copied().cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(1).clamp(1, rest.len());
        d.push(&rest[..n]);
        rest = &rest[n..];
        while let Some(m) = d.decode().expect("valid frames decode") {
            out.push(m);
        }
        // The decoder holds only what was pushed and not yet consumed.
        assert!(d.buffered_len() <= stream.len());
    }
    d.finish().expect("stream ends between frames");
    out
}

fn check_message(m: &Message, chunks: &[usize]) {
    // Postcard body.
    let body = to_body(m).unwrap();
    assert_eq!(&decode_body(&body).unwrap(), m);
    // Frame, whole and chunked.
    let frame = encode_frame(m).unwrap();
    assert_eq!(frame.len(), body.len() + FRAME_HEADER_LEN);
    assert_eq!(&frame[FRAME_HEADER_LEN..], &body[..]);
    assert_eq!(
        decode_chunked(&frame, &[frame.len()], DEFAULT_MAX_FRAME),
        std::slice::from_ref(m)
    );
    assert_eq!(
        decode_chunked(&frame, chunks, DEFAULT_MAX_FRAME),
        std::slice::from_ref(m)
    );
    // Any strict prefix is incomplete, never an error or a message.
    let mut d = FrameDecoder::new();
    d.push(&frame[..frame.len() - 1]);
    assert_eq!(d.decode().unwrap(), None);
    assert!(matches!(d.finish(), Err(FrameError::Truncated { .. })));
    // JSON (human-readable forms: RFC 3339 timestamps, digest strings...).
    let json = serde_json::to_string(m).unwrap();
    assert_eq!(
        &serde_json::from_str::<Message>(&json).unwrap(),
        m,
        "{json}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Every message variant (and every task payload variant inside `Assign`).
    #[test]
    fn every_message_round_trips(
        variant in 0..gen::MESSAGE_VARIANTS,
        payload_variant in 0..gen::PAYLOAD_VARIANTS,
        data in bytes(),
        chunks in proptest::collection::vec(1usize..64, 1..8),
    ) {
        let m = gen::message_from(variant, payload_variant, &data);
        prop_assert_eq!(gen::message_index(&m), variant);
        if let Message::Assign(t) = &m {
            prop_assert_eq!(gen::payload_index(&t.payload), payload_variant);
            prop_assert_eq!(t.kind(), TaskKind::ALL[payload_variant]);
        }
        check_message(&m, &chunks);
    }

    /// Several messages back to back in one stream, fed in random chunks.
    #[test]
    fn message_streams_round_trip(
        picks in proptest::collection::vec(
            (0..gen::MESSAGE_VARIANTS, 0..gen::PAYLOAD_VARIANTS, bytes()), 0..8),
        chunks in proptest::collection::vec(1usize..512, 1..8),
    ) {
        let msgs: Vec<Message> = picks
            .iter()
            .map(|(v, p, data)| gen::message_from(*v, *p, data))
            .collect();
        let stream: Vec<u8> = msgs.iter().flat_map(|m| encode_frame(m).unwrap()).collect();
        prop_assert_eq!(decode_chunked(&stream, &chunks, DEFAULT_MAX_FRAME), msgs);
    }

    /// Polling bodies, which travel without a length prefix; tasks of every kind.
    #[test]
    fn poll_bodies_round_trip(
        heartbeat in bytes(),
        results in proptest::collection::vec(bytes(), 0..4),
        progress in proptest::collection::vec(bytes(), 0..4),
        tasks in proptest::collection::vec((0..gen::PAYLOAD_VARIANTS, bytes()), 0..4),
        acked in bytes(),
        cancels in bytes(),
        next in any::<u64>(),
    ) {
        let req = PollRequest {
            heartbeat: gen::arb(&heartbeat),
            results: results.iter().map(|b| gen::arb(b)).collect(),
            progress: progress.iter().map(|b| gen::arb(b)).collect(),
            accepted: gen::arb(&acked),
        };
        let resp = PollResponse {
            tasks: tasks
                .iter()
                .map(|(v, b)| gen::with_enough(b, |u| gen::task(*v, u)))
                .collect(),
            acked_results: gen::arb(&acked),
            cancels: gen::arb(&cancels),
            next_poll_after: DurationMs(next),
        };
        prop_assert_eq!(from_body::<PollRequest>(&to_body(&req).unwrap()).unwrap(), req.clone());
        prop_assert_eq!(from_body::<PollResponse>(&to_body(&resp).unwrap()).unwrap(), resp.clone());
        let json = serde_json::to_string(&resp).unwrap();
        prop_assert_eq!(serde_json::from_str::<PollResponse>(&json).unwrap(), resp);
        let json = serde_json::to_string(&req).unwrap();
        prop_assert_eq!(serde_json::from_str::<PollRequest>(&json).unwrap(), req);
    }

    /// Arbitrary bytes never panic the decoder, whatever the limit and chunking; it buffers
    /// no more than it was given.
    #[test]
    fn decoder_survives_garbage(
        data in proptest::collection::vec(any::<u8>(), 0..4096),
        max in 0u32..5000,
        chunk in 1usize..300,
    ) {
        let mut d = FrameDecoder::with_max(max);
        for piece in data.chunks(chunk) {
            d.push(piece);
            prop_assert!(d.buffered_len() <= data.len());
            loop {
                match d.decode() {
                    Ok(Some(m)) => {
                        // Whatever decodes re-encodes within the limit and decodes the same.
                        let frame = encode_frame_with_max(&m, max).unwrap();
                        let mut again = FrameDecoder::with_max(max);
                        again.push(&frame);
                        prop_assert_eq!(again.decode().unwrap(), Some(m));
                    }
                    Ok(None) => break,
                    Err(FrameError::TooLarge { .. }) => break,
                    Err(FrameError::Decode(_) | FrameError::TrailingBytes(_)) => {}
                    Err(e) => prop_assert!(false, "unexpected error {e}"),
                }
            }
        }
        let _ = d.finish();
    }

    /// Frames written with `write_frame` come back from `read_frame`, through a pipe small
    /// enough to split every frame.
    #[test]
    fn async_round_trip(
        picks in proptest::collection::vec(
            (0..gen::MESSAGE_VARIANTS, 0..gen::PAYLOAD_VARIANTS, bytes()), 1..6),
        pipe in 1usize..256,
    ) {
        let msgs: Vec<Message> = picks
            .iter()
            .map(|(v, p, data)| gen::message_from(*v, *p, data))
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let got = rt.block_on(async {
            let (mut a, mut b) = tokio::io::duplex(pipe);
            let to_send = msgs.clone();
            let writer = tokio::spawn(async move {
                for m in &to_send {
                    write_frame(&mut a, m, DEFAULT_MAX_FRAME).await.unwrap();
                }
                // Dropping `a` closes the pipe: a clean end between frames.
            });
            let mut got = Vec::new();
            while let Some(m) = read_frame(&mut b, DEFAULT_MAX_FRAME).await.unwrap() {
                got.push(m);
            }
            writer.await.unwrap();
            got
        });
        prop_assert_eq!(got, msgs);
    }
}

/// The forced generators really reach every variant (guards the generator itself).
#[test]
fn generators_cover_every_variant() {
    for v in 0..gen::MESSAGE_VARIANTS {
        for p in 0..gen::PAYLOAD_VARIANTS {
            let m = gen::message_from(v, p, &[0x5a; 64]);
            assert_eq!(gen::message_index(&m), v);
            if let Message::Assign(t) = &m {
                assert_eq!(gen::payload_index(&t.payload), p);
            }
            check_message(&m, &[3]);
        }
    }
}

/// A realistic deploy task survives every encoding unchanged.
#[test]
fn realistic_deploy_round_trips() {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let mut spec = DeploySpec::new(format!("127.0.0.1:5000/team/app:1.2@{digest}"));
    spec.release = ReleaseInfo {
        id: "rel-1".into(),
        name: "app".into(),
        version: "1.2".into(),
    };
    spec.env.insert("MODE".into(), "prod".into());
    spec.ports.push(PortMapping {
        host: 8080,
        container: 80,
        protocol: PortProtocol::Tcp,
        host_ip: Some("127.0.0.1".into()),
    });
    spec.volumes.push(VolumeMount {
        source: "/srv/data".into(),
        dest: "/data".into(),
        read_only: true,
    });
    spec.networks.push("backend".into());
    spec.restart = RestartPolicy::OnFailure { max_retries: 5 };
    spec.memory_bytes = Some(256 << 20);
    spec.nano_cpus = Some(500_000_000);
    spec.health = HealthSpec {
        probe: HealthProbe::Http {
            port: 80,
            path: "/healthz".into(),
        },
        ..HealthSpec::default()
    };
    spec.pre_hook = Some(HookSpec::image(format!("hooks/migrate@{digest}")));
    spec.sticker = Some("{\"schema\":\"wharf.sticker/v1\"}".into());
    let task = AgentTask {
        id: uuid::Uuid::from_u128(0x1234),
        target: "web".into(),
        payload: TaskPayload::Deploy(spec),
        credentials: Some(SealedCredentials {
            ephemeral_public: [9; 32],
            nonce: [3; 12],
            ciphertext: vec![1, 2, 3],
        }),
        timeout: DurationMs::from_mins(10),
        priority: Priority::High,
        idempotency_key: Some("ci-42".into()),
        requested_by: "ci".into(),
        assigned_at: Timestamp(1_714_566_600_250),
        expires_at: Some(Timestamp(1_714_567_200_250)),
        attempt: 1,
    };
    let TaskPayload::Deploy(spec) = &task.payload else {
        unreachable!()
    };
    let image = spec.image_ref().unwrap();
    assert_eq!(
        image.to_string(),
        format!("127.0.0.1:5000/team/app@{digest}")
    );
    let m = Message::Assign(task.clone());
    check_message(&m, &[1, 7, 100]);
    let json: serde_json::Value = serde_json::to_value(&task).unwrap();
    assert_eq!(json["priority"], "high");
    assert_eq!(json["assigned_at"], "2024-05-01T12:30:00.250Z");
    assert_eq!(
        json["payload"]["deploy"]["restart"]["on-failure"]["max_retries"],
        5
    );
    assert_eq!(
        json["payload"]["deploy"]["health"]["probe"]["http"]["path"],
        "/healthz"
    );
}
