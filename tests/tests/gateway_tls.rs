//! TLS on both listeners (`--tls-cert`/`--tls-key`), with a self-signed certificate made in
//! the test and loaded from PEM files the way the binary loads them.

use std::time::Duration;

use bytes::Bytes;
use switchyard_gateway_agent::gateway::{Config, load_tls};
use switchyard_proto::wire::Frame;
use switchyard_tests::rawclient::{BOTH, Proto, RawClient, TestGateway};

const T: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_wss_sessions_work_and_plain_text_is_refused() {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, key.cert.pem()).unwrap();
    std::fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();

    let mut cfg = Config::new("gw-tls");
    cfg.tls = Some(load_tls(&cert_path, &key_path).expect("PEM loads"));
    cfg.hello_timeout = Duration::from_millis(500);
    let gw = TestGateway::with_config(cfg).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(key.cert.der().clone()).unwrap();
    for proto in BOTH {
        let mut c = RawClient::connect_tls(proto, gw.addr(proto), roots.clone(), "localhost").await;
        match c.hello("u1", "").await {
            Frame::Welcome(w) => assert_eq!(w.gateway_id, "gw-tls"),
            other => panic!("{proto:?}: expected WELCOME, got {other:?}"),
        }
        c.send(&Frame::Data {
            seq: 1,
            payload: Bytes::from_static(b"secret"),
        })
        .await;
        let mut got = vec![c.frame(T).await, c.frame(T).await];
        got.sort_by_key(|f| f.kind() as u8);
        assert_eq!(
            got,
            vec![
                Frame::Data {
                    seq: 1,
                    payload: Bytes::from_static(b"secret")
                },
                Frame::Ack(1)
            ]
        );
    }

    // A plain-text client on the TLS port gets nothing but a closed socket.
    let mut plain = tokio::net::TcpStream::connect(gw.addr(Proto::Tcp))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain.write_all(&[0, 0, 0, 1, 0x03]).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(T, plain.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert!(
        n == 0 || buf[0] == 0x15,
        "no frame, at most a TLS alert: {:?}",
        &buf[..n]
    );

    // A bad key file is a clear error, not a crash.
    std::fs::write(&key_path, "not a key").unwrap();
    let err = load_tls(&cert_path, &key_path).unwrap_err().to_string();
    assert!(err.contains("no private key"), "{err}");
}
