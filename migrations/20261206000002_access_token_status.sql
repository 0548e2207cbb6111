-- What an access token's holder may still do: whether the token was revoked (by itself, or by
-- its user ending every session since it was issued: a password change or reset moves the
-- user's session epoch on), the role its user holds now in the token's tenant (none once
-- removed), and whether the user is still a platform administrator. Read by the authenticator when it first sees a token and every few seconds after,
-- so that a removed or demoted member loses the tenant or the role within seconds, not when
-- the token expires.
ALTER TABLE users ADD COLUMN session_epoch integer NOT NULL DEFAULT 0;
-- The epoch a refresh token was issued in: one issued by a login or refresh that raced a
-- password change (verified before it, committed after it) is refused all the same.
ALTER TABLE refresh_tokens ADD COLUMN session_epoch integer NOT NULL DEFAULT 0;

CREATE POLICY memberships_definer ON memberships FOR SELECT TO CURRENT_USER USING (true);
CREATE FUNCTION access_token_status(p_jti uuid, p_user uuid, p_tenant uuid, p_epoch integer)
    RETURNS TABLE (revoked boolean, role text, platform_admin boolean)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public
    AS $$ SELECT EXISTS (SELECT 1 FROM revoked_tokens WHERE jti = p_jti)
                 OR NOT EXISTS (SELECT 1 FROM users u WHERE u.id = p_user AND u.session_epoch <= p_epoch),
                 (SELECT m.role FROM memberships m WHERE m.user_id = p_user AND m.tenant_id = p_tenant),
                 COALESCE((SELECT u.is_platform_admin FROM users u WHERE u.id = p_user), false) $$;
REVOKE ALL ON FUNCTION access_token_status(uuid, uuid, uuid, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION access_token_status(uuid, uuid, uuid, integer) TO tessera_app;
