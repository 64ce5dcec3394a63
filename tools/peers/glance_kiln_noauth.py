"""Paste filter for kiln's Keystone-less Glance test peer.

tools/setup.d/glance.sh installs this file into the OpenStack venv; tools/peers/glance.sh and
kiln-openstack's testkit put it in Glance's pipeline in place of keystonemiddleware.

Why: Glance's stock no-auth pipeline (`unauthenticated-context`) builds a request context with
project_id None, so images get owner null and every import task fails (tasks.owner NOT NULL).
This filter sets the headers keystonemiddleware's auth_token would set after validating a token
(X-Identity-Status, X-Project-Id, X-User-Id, X-Roles) and Glance's normal `context` filter
builds the context from them. Headers the client sends itself win, so a test can act as
another project.

Options ([filter:kiln-noauth] in the paste file):
  project_id, user_id, roles   the identity it fills in
  token                        when non-empty, every /v2 request must carry exactly
                               `X-Auth-Token: <token>`, else 401 with a JSON body (lets tests
                               check that a client sends its token, and what it does on 401).
                               Version discovery (/ and /versions) stays open, as with Keystone.
"""

import hmac
import json


class KilnNoAuth(object):
    def __init__(self, app, conf):
        self.app = app
        self.project_id = conf.get('project_id') or 'kiln-project'
        self.user_id = conf.get('user_id') or 'kiln-user'
        self.roles = conf.get('roles') or 'admin,member,reader'
        self.token = (conf.get('token') or '').encode() or None

    def _reject(self, start_response):
        body = json.dumps({'error': {
            'code': 401, 'title': 'Unauthorized',
            'message': 'The request you have made requires authentication.'}}).encode()
        start_response('401 Unauthorized', [
            ('Content-Type', 'application/json'),
            ('Content-Length', str(len(body))),
            ('WWW-Authenticate', 'Keystone uri="none"')])
        return [body]

    def __call__(self, environ, start_response):
        path = environ.get('PATH_INFO', '')
        if self.token is not None and path.startswith('/v2'):
            given = environ.get('HTTP_X_AUTH_TOKEN', '').encode()
            if not hmac.compare_digest(given, self.token):
                return self._reject(start_response)
        environ['HTTP_X_IDENTITY_STATUS'] = 'Confirmed'
        environ.setdefault('HTTP_X_PROJECT_ID', self.project_id)
        environ.setdefault('HTTP_X_USER_ID', self.user_id)
        environ.setdefault('HTTP_X_ROLES', self.roles)
        return self.app(environ, start_response)


def filter_factory(global_conf, **local_conf):
    conf = dict(global_conf)
    conf.update(local_conf)

    def _filter(app):
        return KilnNoAuth(app, conf)
    return _filter
