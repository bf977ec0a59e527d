use super::*;

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn a_signature_is_what_the_official_python_client_computes() {
    // hmac.new(b"secret-key-1", b"20261207T081500Z", hashlib.sha1).hexdigest()
    let c = Credentials::new("app", "secret-key-1");
    let (date_time, authorization) = c.sign(at(1_796_631_300));
    assert_eq!(date_time, "20261207T081500Z");
    assert_eq!(
        authorization,
        "MQv2-HMAC-SHA1 Credential=app, SignedHeaders=x-mq-date-time, \
         Signature=b532c50f0ed8ca097ffb91170beb45e1dbafa335"
    );
}

#[test]
fn date_times_round_trip_across_leap_days_and_reject_garbage() {
    assert_eq!(format_date_time(at(951_868_799)), "20000229T235959Z");
    for secs in [0, 951_868_799, 1_796_631_300, 4_102_444_800] {
        assert_eq!(parse_date_time(&format_date_time(at(secs))), Some(at(secs)));
    }
    for bad in [
        "",
        "20261207 081500Z",
        "20261307T081500Z",
        "2026120xT081500Z",
        "20261207T081500",
        "+0261207T081500Z",
    ] {
        assert_eq!(parse_date_time(bad), None, "{bad:?}");
    }
}

#[test]
fn a_good_signature_passes_and_a_wrong_key_or_an_old_time_fails() {
    let c = Credentials::new("app", "secret-key-1");
    let now = at(1_796_631_300);
    let skew = Duration::from_secs(900);
    let (date_time, authorization) = c.sign(now);
    let signed = parse_authorization(&authorization).unwrap();
    assert_eq!(signed.access_key, "app");
    verify(
        &signed,
        "secret-key-1",
        &date_time,
        now + Duration::from_secs(899),
        skew,
    )
    .unwrap();
    let wrong = verify(&signed, "secret-key-2", &date_time, now, skew).unwrap_err();
    assert!(wrong.contains("does not match"), "{wrong}");
    let old = verify(
        &signed,
        "secret-key-1",
        &date_time,
        now + Duration::from_secs(901),
        skew,
    )
    .unwrap_err();
    assert!(old.contains("901s away"), "{old}");
    let early = verify(
        &signed,
        "secret-key-1",
        &date_time,
        now - Duration::from_secs(901),
        skew,
    )
    .unwrap_err();
    assert!(early.contains("away"), "{early}");
    // The signature is over this date time only.
    let other = format_date_time(now + Duration::from_secs(1));
    assert!(verify(&signed, "secret-key-1", &other, now, skew).is_err());
}

#[test]
fn malformed_authorization_headers_are_named() {
    assert!(parse_authorization("Bearer x")
        .unwrap_err()
        .contains("not MQv2-HMAC-SHA1"));
    assert!(
        parse_authorization("MQv2-HMAC-SHA1 SignedHeaders=x-mq-date-time, Signature=ab")
            .unwrap_err()
            .contains("Credential")
    );
    assert!(
        parse_authorization("MQv2-HMAC-SHA1 Credential=a, SignedHeaders=host, Signature=ab")
            .unwrap_err()
            .contains("x-mq-date-time")
    );
    assert!(
        parse_authorization("MQv2-HMAC-SHA1 Credential=a, SignedHeaders=x-mq-date-time")
            .unwrap_err()
            .contains("Signature")
    );
    let scoped =
        parse_authorization("MQv2-HMAC-SHA1 Credential=ak/cn-hz/ons, SignedHeaders=x-mq-date-time, Signature=AB")
            .unwrap();
    assert_eq!(scoped.access_key, "ak");
    assert_eq!(scoped.signature, "ab");
}

#[test]
fn rights_follow_patterns_and_admin_has_them_all() {
    let user = User {
        access_key: "orders-app".into(),
        secret_key: "0123456789".into(),
        admin: false,
        topics: vec![("orders".into(), right::PUB), ("audit-*".into(), right::SUB)],
        groups: vec![("billing".into(), right::SUB)],
    };
    user.validate().unwrap();
    assert!(user.allows(Need::Known));
    assert!(user.allows(Need::Publish("orders")));
    assert!(!user.allows(Need::Subscribe("orders")));
    assert!(!user.allows(Need::Publish("orders2")));
    assert!(user.allows(Need::Subscribe("audit-2026")));
    assert!(!user.allows(Need::Publish("audit-2026")));
    assert!(user.allows(Need::Group("billing")));
    assert!(!user.allows(Need::Group("other")));
    assert!(!user.allows(Need::Admin));
    let admin = User {
        admin: true,
        ..user.clone()
    };
    assert!(admin.allows(Need::Admin) && admin.allows(Need::Publish("anything")));

    assert_eq!(parse_rights("pub+sub").unwrap(), right::PUB | right::SUB);
    assert_eq!(rights_name(parse_rights("sub,pub").unwrap()), "pub+sub");
    assert!(parse_rights("write").is_err());
    let bad = User {
        topics: vec![("a*b".into(), right::PUB)],
        ..user.clone()
    };
    assert!(bad.validate().is_err());
    let weak = User {
        secret_key: "short".into(),
        ..user
    };
    assert!(weak.validate().unwrap_err().contains("secret key"));
}

#[test]
fn a_peer_proof_binds_the_secret_the_parts_and_the_time() {
    let secret = ClusterSecret::new(b"0123456789abcdef-cluster\n").unwrap();
    let other = ClusterSecret::new(b"another-secret-of-16-bytes").unwrap();
    let skew = Duration::from_secs(60);
    let proof = secret.sign(1_000_000, &[b"broker-a", b"1"]);
    secret.verify(&proof, &[b"broker-a", b"1"], 1_030_000, skew).unwrap();
    assert!(other.verify(&proof, &[b"broker-a", b"1"], 1_000_000, skew).is_err());
    assert!(secret.verify(&proof, &[b"broker-a", b"2"], 1_000_000, skew).is_err());
    // Bytes moved from one part to the next change the proof.
    assert!(secret.verify(&proof, &[b"broker-a1", b""], 1_000_000, skew).is_err());
    assert!(secret.verify(&proof, &[b"broker-a", b"1"], 1_061_000, skew).is_err());
    assert!(secret.verify("garbage", &[], 0, skew).is_err());
    assert!(ClusterSecret::new(b"short").is_err());

    let challenge = nonce();
    let answer = secret.answer(&challenge, &[b"g"]);
    assert!(secret.check_answer(&challenge, &[b"g"], &answer));
    assert!(!other.check_answer(&challenge, &[b"g"], &answer));
    assert!(!secret.check_answer(&nonce(), &[b"g"], &answer));
}
