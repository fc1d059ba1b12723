//! Mail: with SMTP configured it is sent (here to a local server speaking
//! SMTP), and recorded in the outbox either way.

mod common;

use common::{TestServer, digits, latest_mail};
use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A minimal SMTP server that accepts every message and hands over its DATA.
async fn fake_smtp() -> (u16, tokio::sync::mpsc::Receiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 fake.smtp ESMTP\r\n").await.unwrap();
                let mut data: Option<String> = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(buf) = data.as_mut() {
                        if line == "." {
                            let _ = tx.send(std::mem::take(buf)).await;
                            data = None;
                            write.write_all(b"250 OK queued\r\n").await.unwrap();
                        } else {
                            buf.push_str(&line);
                            buf.push('\n');
                        }
                        continue;
                    }
                    let verb = line.split_whitespace().next().unwrap_or("").to_uppercase();
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" | "HELO" => b"250-fake.smtp\r\n250 8BITMIME\r\n",
                        "MAIL" | "RCPT" | "RSET" | "NOOP" => b"250 OK\r\n",
                        "DATA" => {
                            data = Some(String::new());
                            b"354 go ahead\r\n"
                        }
                        "QUIT" => {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => b"502 not implemented\r\n",
                    };
                    write.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signup_codes_go_out_by_smtp() {
    let (port, mut received) = fake_smtp().await;
    let s = TestServer::start_with(|c| {
        c.smtp = Some(warden_identity::SmtpConfig {
            host: "127.0.0.1".into(),
            port,
            security: warden_identity::SmtpSecurity::None,
            username: None,
            password: None,
            from: "Warden <warden@example.com>".into(),
        });
    })
    .await;
    let r = s.call(Method::POST, "/api/v1/auth/signup", None, Some(json!({"username": "mailme", "email": "mailme@example.com", "password": "mail-password"}))).await;
    assert_eq!(r.status, 201);
    let message = tokio::time::timeout(std::time::Duration::from_secs(10), received.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(message.contains("To: mailme@example.com"), "{message}");
    assert!(
        message.contains("From: Warden <warden@example.com>"),
        "{message}"
    );
    let kept = latest_mail(&s, "mailme@example.com").await;
    assert_eq!(kept["status"], "delivered");
    let code = digits(kept["body"].as_str().unwrap(), 6);
    assert!(message.contains(&code), "the sent mail carries the code");
    s.stop().await;
}

#[tokio::test]
async fn without_smtp_mail_stays_in_the_outbox() {
    let s = TestServer::start().await;
    s.call(
        Method::POST,
        "/api/v1/auth/signup",
        None,
        Some(json!({"username": "kept", "email": "kept@example.com", "password": "kept-password"})),
    )
    .await;
    let kept = latest_mail(&s, "kept@example.com").await;
    assert_eq!(kept["status"], "outbox");
    assert_eq!(kept["subject"], "Verify your email address");
    // Only admins read the outbox.
    let (user, _) = s.user("snoop", &["operator"], None).await;
    assert_eq!(s.get("/admin/outbox", &user).await.status, 403);
    s.stop().await;
}

#[tokio::test]
async fn an_unreachable_smtp_server_fails_no_request() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port(); // closed again at once
    let s = TestServer::start_with(|c| {
        c.smtp = Some(warden_identity::SmtpConfig {
            host: "127.0.0.1".into(),
            port,
            security: warden_identity::SmtpSecurity::None,
            username: None,
            password: None,
            from: "warden@example.com".into(),
        });
    })
    .await;
    let r = s.call(Method::POST, "/api/v1/auth/signup", None, Some(json!({"username": "nomail", "email": "nomail@example.com", "password": "nomail-password"}))).await;
    assert_eq!(r.status, 201);
    let kept = latest_mail(&s, "nomail@example.com").await;
    assert!(
        kept["status"].as_str().unwrap().starts_with("error"),
        "{kept}"
    );
    s.stop().await;
}
