/** Bull Board at /admin/queues, behind a bearer token or the session cookie its login form sets. */
import type { FastifyInstance } from 'fastify';
import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { FastifyAdapter } from '@bull-board/fastify';
import type { FerryQueues } from '@ferry/queue';
import { Auth, LoginLimiter, loginPage } from './auth';
import { ApiError } from './errors';

export interface BoardOptions {
  /** POST /admin/login tries per client address per minute (default 10); then 429. */
  loginLimit?: number;
}

export function registerBoard(
  app: FastifyInstance,
  auth: Auth,
  queues: FerryQueues,
  opts: BoardOptions = {},
): void {
  const limiter = new LoginLimiter(opts.loginLimit ?? 10, 60_000);
  app.register(async (scope) => {
    scope.addContentTypeParser(
      'application/x-www-form-urlencoded',
      { parseAs: 'string', bodyLimit: 4096 },
      (_req, body, done) => {
        done(null, Object.fromEntries(new URLSearchParams(body as string)));
      },
    );
    scope.get('/admin/login', async (_req, reply) => {
      if (auth.open) return reply.redirect('/admin/queues', 303);
      return reply.type('text/html; charset=utf-8').send(loginPage());
    });
    scope.post('/admin/login', async (req, reply) => {
      if (auth.open) return reply.redirect('/admin/queues', 303);
      // Counted before the token is looked at: guessing costs a try whether it is right or not.
      const wait = limiter.take(req.ip);
      if (wait > 0) {
        const e = new ApiError(
          'FERRY_TOO_MANY_REQUESTS',
          `too many sign-in attempts from this address; try again in ${wait} s`,
        );
        return reply.code(e.status).header('retry-after', String(wait)).send(e.toBody());
      }
      const token = (req.body as Record<string, unknown> | undefined)?.token;
      const principal = typeof token === 'string' ? auth.identify(token) : undefined;
      if (!principal) {
        return reply
          .code(401)
          .type('text/html; charset=utf-8')
          .send(loginPage('That token is not valid.'));
      }
      const secure = req.protocol === 'https';
      return reply
        .header('set-cookie', auth.sessionCookie(principal, secure))
        .redirect('/admin/queues', 303);
    });
    scope.post('/admin/logout', async (_req, reply) =>
      reply.header('set-cookie', Auth.clearCookie()).redirect('/admin/login', 303),
    );
  });
  const board = new FastifyAdapter();
  board.setBasePath('/admin/queues');
  createBullBoard({
    queues: [queues.lookup, queues.upload, queues.assemble].map(
      (q) => new BullMQAdapter(q as never),
    ),
    serverAdapter: board,
    options: { uiConfig: { boardTitle: 'Ferry' } },
  });
  app.register(board.registerPlugin() as never, { prefix: '/admin/queues' });
}
