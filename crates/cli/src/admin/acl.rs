//! `raftmq acl put-user|delete-user|users`: the users of a secured cluster (`auth = true`) and
//! their rights, in every broker group. Secret keys never appear on the command line: a new
//! one is generated and printed once, or read from a file.

use clap::Subcommand;
use raftmq_client::Admin;
use raftmq_common::auth::{parse_rights, rights_name, User};
use serde_json::json;

use crate::table;

#[derive(Debug, Subcommand)]
pub(crate) enum AclCommand {
    /// Create a user, or replace its secret key and rights (the rights given replace the old
    /// ones). Without --secret-file a new secret key is generated and printed once.
    PutUser {
        access_key: String,
        /// A file whose first line is the secret key (8 to 256 characters).
        #[arg(long)]
        secret_file: Option<std::path::PathBuf>,
        /// Every right: topics, groups, users, offsets, membership, fault injection.
        #[arg(long)]
        admin: bool,
        /// Rights on topics: PATTERN=pub|sub|pub+sub, PATTERN a name, prefix* or *. Repeatable.
        #[arg(long = "topic", value_name = "PATTERN=RIGHTS")]
        topics: Vec<String>,
        /// Rights on consumer groups: PATTERN=sub. Repeatable.
        #[arg(long = "group", value_name = "PATTERN=RIGHTS")]
        groups: Vec<String>,
        /// Only these broker groups (comma-separated); all by default.
        #[arg(long, value_delimiter = ',')]
        broker_group: Vec<String>,
    },
    /// Delete a user from every broker group.
    DeleteUser {
        access_key: String,
        #[arg(long, value_delimiter = ',')]
        broker_group: Vec<String>,
    },
    /// The users of each broker group and their rights (never their secret keys).
    Users {
        #[arg(long, value_delimiter = ',')]
        broker_group: Vec<String>,
    },
}

fn grants(args: &[String], what: &str) -> anyhow::Result<Vec<(String, u8)>> {
    args.iter()
        .map(|a| {
            let (pattern, rights) = a
                .rsplit_once('=')
                .ok_or_else(|| anyhow::anyhow!("--{what} {a:?}: write PATTERN=RIGHTS, e.g. orders=pub"))?;
            let rights = parse_rights(rights).map_err(|e| anyhow::anyhow!("--{what} {a:?}: {e}"))?;
            Ok((pattern.to_owned(), rights))
        })
        .collect()
}

/// 32 hexadecimal characters from the OS's random source.
fn new_secret() -> String {
    raftmq_common::auth::nonce()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

fn show(grants: &[(String, u8)]) -> String {
    grants
        .iter()
        .map(|(p, r)| format!("{p}={}", rights_name(*r)))
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) async fn run(admin: &Admin, command: AclCommand, as_json: bool) -> anyhow::Result<()> {
    match command {
        AclCommand::PutUser {
            access_key,
            secret_file,
            admin: is_admin,
            topics,
            groups,
            broker_group,
        } => {
            let (secret_key, generated) = match &secret_file {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
                    (text.lines().next().unwrap_or_default().trim().to_owned(), false)
                }
                None => (new_secret(), true),
            };
            let user = User {
                access_key,
                secret_key,
                admin: is_admin,
                topics: grants(&topics, "topic")?,
                groups: grants(&groups, "group")?,
            };
            let done = admin.put_user(&user, &broker_group).await?;
            if as_json {
                let secret = generated.then_some(user.secret_key.as_str());
                println!(
                    "{}",
                    json!({"access_key": user.access_key, "groups": done, "secret_key": secret})
                );
            } else {
                println!("user {} stored in {}", user.access_key, done.join(", "));
                if generated {
                    println!("secret key (shown once): {}", user.secret_key);
                }
            }
        }
        AclCommand::DeleteUser {
            access_key,
            broker_group,
        } => {
            let done = admin.delete_user(&access_key, &broker_group).await?;
            if as_json {
                println!("{}", json!({"access_key": access_key, "groups": done}));
            } else {
                println!("user {access_key} deleted from {}", done.join(", "));
            }
        }
        AclCommand::Users { broker_group } => {
            let listed = admin.users(&broker_group).await?;
            if as_json {
                let items: Vec<_> = listed
                    .iter()
                    .flat_map(|(g, users)| {
                        users.iter().map(move |u| {
                            json!({"group": g, "access_key": u.access_key, "admin": u.admin, "topics": show(&u.topics), "groups": show(&u.groups)})
                        })
                    })
                    .collect();
                println!("{}", json!(items));
                return Ok(());
            }
            let rows: Vec<Vec<String>> = listed
                .iter()
                .flat_map(|(g, users)| {
                    users.iter().map(move |u| {
                        vec![
                            g.clone(),
                            u.access_key.clone(),
                            if u.admin { "yes" } else { "no" }.to_owned(),
                            show(&u.topics),
                            show(&u.groups),
                        ]
                    })
                })
                .collect();
            print!(
                "{}",
                table::render(&["BROKER_GROUP", "ACCESS_KEY", "ADMIN", "TOPICS", "GROUPS"], &rows)
            );
        }
    }
    Ok(())
}
