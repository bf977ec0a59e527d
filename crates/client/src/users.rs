//! Users and their rights on a secured cluster (`auth = true`): every broker group keeps its
//! own replicated copy, so these calls go to the master of every group (or the named ones).
//! Admin rights are needed for all of them.

use raftmq_common::auth::{right, User};
use raftmq_proto as pb;

use crate::{Admin, Error};

fn grants_to_proto(grants: &[(String, u8)]) -> Vec<pb::Grant> {
    grants
        .iter()
        .map(|(pattern, r)| pb::Grant {
            pattern: pattern.clone(),
            r#pub: r & right::PUB != 0,
            sub: r & right::SUB != 0,
        })
        .collect()
}

fn grants_from_proto(grants: Vec<pb::Grant>) -> Vec<(String, u8)> {
    grants
        .into_iter()
        .map(|g| {
            let r = if g.r#pub { right::PUB } else { 0 } | if g.sub { right::SUB } else { 0 };
            (g.pattern, r)
        })
        .collect()
}

impl Admin {
    /// Calls the master of every group (or the named ones), following NOT_MASTER; the answers
    /// by group.
    async fn each_master<T, F, Fut>(&self, groups: &[String], mut call: F) -> Result<Vec<(String, T)>, Error>
    where
        F: FnMut(raftmq_proto::broker_client::BrokerClient<crate::Transport>, tonic::Request<()>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut out = Vec::new();
        for (group, master) in self.masters(groups).await? {
            let client = self.client();
            let reply = self
                .on_master(&master, |b| {
                    call(b, client.request((), client.config().request_timeout))
                })
                .await?;
            out.push((group, reply));
        }
        Ok(out)
    }

    /// Creates a user, or replaces its secret key and rights, in every group (or the named
    /// ones). Returns the groups.
    pub async fn put_user(&self, user: &User, groups: &[String]) -> Result<Vec<String>, Error> {
        user.validate()
            .map_err(|e| raftmq_common::ErrorCode::InvalidArgument.err(e))?;
        let req = pb::User {
            access_key: user.access_key.clone(),
            secret_key: user.secret_key.clone(),
            admin: user.admin,
            topics: grants_to_proto(&user.topics),
            groups: grants_to_proto(&user.groups),
        };
        let done = self
            .each_master(groups, |mut b, r| {
                let r = r.map(|()| req.clone());
                async move { b.put_user(r).await }
            })
            .await?;
        Ok(done.into_iter().map(|(g, _)| g).collect())
    }

    /// Deletes a user from every group (or the named ones). Returns the groups.
    pub async fn delete_user(&self, access_key: &str, groups: &[String]) -> Result<Vec<String>, Error> {
        let req = pb::DeleteUserRequest {
            access_key: access_key.to_owned(),
        };
        let done = self
            .each_master(groups, |mut b, r| {
                let r = r.map(|()| req.clone());
                async move { b.delete_user(r).await }
            })
            .await?;
        Ok(done.into_iter().map(|(g, _)| g).collect())
    }

    /// The users of each group (or the named ones), secret keys left out.
    pub async fn users(&self, groups: &[String]) -> Result<Vec<(String, Vec<User>)>, Error> {
        let listed = self
            .each_master(groups, |mut b, r| {
                let r = r.map(|()| pb::ListUsersRequest {});
                async move { b.list_users(r).await }
            })
            .await?;
        Ok(listed
            .into_iter()
            .map(|(group, reply)| {
                let users = reply
                    .users
                    .into_iter()
                    .map(|u| User {
                        access_key: u.access_key,
                        secret_key: String::new(),
                        admin: u.admin,
                        topics: grants_from_proto(u.topics),
                        groups: grants_from_proto(u.groups),
                    })
                    .collect();
                (group, users)
            })
            .collect())
    }
}
