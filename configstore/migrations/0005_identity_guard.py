"""The replicated identities' tables refuse a write by any role but their owner unless the
applier is applying (it sets configstore.applying for its transaction): the node's web
server or a shell connected as the app role cannot write a user, a group, a membership, a
permission of either, a prefix permission or a token on one node only (which would make
the nodes decide commands differently). The owner (who migrates) is not refused: it owns
the triggers too."""

from django.db import migrations

TABLES = (
    "auth_user",
    "auth_group",
    "auth_user_groups",
    "auth_user_user_permissions",
    "auth_group_permissions",
    "configstore_prefix_permission",
    "configstore_api_token",
)

GUARD = """
CREATE FUNCTION configstore_identity_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('configstore.applying', true) IS DISTINCT FROM 'on'
       AND NOT pg_has_role(current_user,
                           (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'USAGE') THEN
        RAISE EXCEPTION '% is a replicated identity table: change it through consensus '
            '(manage.py access, the admin, /api/v1/access/), never on one node', TG_TABLE_NAME
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NULL;
END $$;
""" + "".join(
    f"CREATE TRIGGER configstore_identity_guard BEFORE INSERT OR UPDATE OR DELETE ON {t} "
    "FOR EACH STATEMENT EXECUTE FUNCTION configstore_identity_guard();\n"
    for t in TABLES
)
UNGUARD = "".join(f"DROP TRIGGER configstore_identity_guard ON {t};\n" for t in TABLES) + (
    "DROP FUNCTION configstore_identity_guard();"
)


class Migration(migrations.Migration):
    dependencies = [("configstore", "0004_access")]
    operations = [migrations.RunSQL(GUARD, UNGUARD)]
