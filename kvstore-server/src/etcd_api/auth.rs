//! The Auth service: `Authenticate` with a token's name as the user and the token
//! as the password answers a token that the other calls carry (etcd's `token`
//! metadata); what it may do is its role's, from the access file. Users and roles
//! are not managed through this API: they live in the access file.

use tonic::{Request, Response, Status};

use super::pb::etcdserverpb::*;
use super::Api;

#[tonic::async_trait]
impl auth_server::Auth for Api {
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let Some(access) = &self.access else {
            return Err(Status::failed_precondition(
                "etcdserver: authentication is not enabled",
            ));
        };
        let r = request.into_inner();
        match access.role_of(&r.password) {
            Some(role) if role.token_name == r.name => Ok(Response::new(AuthenticateResponse {
                header: self.header_now(),
                token: r.password,
            })),
            _ => Err(Status::invalid_argument(
                "etcdserver: authentication failed, invalid user ID or password",
            )),
        }
    }

    async fn auth_status(
        &self,
        _request: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        Ok(Response::new(AuthStatusResponse {
            header: self.header_now(),
            enabled: self.access.is_some(),
            auth_revision: 1,
        }))
    }

    not_served_rpcs! {
        "users and roles are tokens and roles of the access file (--access-file)";
        auth_enable(AuthEnableRequest) -> AuthEnableResponse;
        auth_disable(AuthDisableRequest) -> AuthDisableResponse;
        user_add(AuthUserAddRequest) -> AuthUserAddResponse;
        user_get(AuthUserGetRequest) -> AuthUserGetResponse;
        user_list(AuthUserListRequest) -> AuthUserListResponse;
        user_delete(AuthUserDeleteRequest) -> AuthUserDeleteResponse;
        user_change_password(AuthUserChangePasswordRequest) -> AuthUserChangePasswordResponse;
        user_grant_role(AuthUserGrantRoleRequest) -> AuthUserGrantRoleResponse;
        user_revoke_role(AuthUserRevokeRoleRequest) -> AuthUserRevokeRoleResponse;
        role_add(AuthRoleAddRequest) -> AuthRoleAddResponse;
        role_get(AuthRoleGetRequest) -> AuthRoleGetResponse;
        role_list(AuthRoleListRequest) -> AuthRoleListResponse;
        role_delete(AuthRoleDeleteRequest) -> AuthRoleDeleteResponse;
        role_grant_permission(AuthRoleGrantPermissionRequest) -> AuthRoleGrantPermissionResponse;
        role_revoke_permission(AuthRoleRevokePermissionRequest) -> AuthRoleRevokePermissionResponse;
    }
}
