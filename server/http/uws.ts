import uWS from 'uWebSockets.js';

export type { HttpRequest, HttpResponse, TemplatedApp } from 'uWebSockets.js';

/**
 * The npm mirror of uWebSockets.js silently falls back to a slow pure-JS shim when its native
 * binary fails to load. Only the native module exports `getParts` and the compressor constants,
 * so their absence means we are on the shim and must not serve.
 */
function assertNativeUws(): void {
  const native = uWS as unknown as Record<string, unknown>;
  if (typeof native.getParts !== 'function' || typeof native.SHARED_COMPRESSOR !== 'number') {
    throw new Error(
      'uWebSockets.js loaded its JavaScript fallback instead of the native binary ' +
        `(platform ${process.platform}-${process.arch}, Node ABI ${process.versions.modules}); refusing to start. ` +
        'Use a Node.js version the installed uWebSockets.js ships a binary for (Node 20 on glibc >= 2.36).',
    );
  }
}

export function createApp(): uWS.TemplatedApp {
  assertNativeUws();
  return uWS.App();
}

/** `app.close()` exists at run time (closes every socket) but is missing from the shipped types. */
export function closeAllSockets(app: uWS.TemplatedApp): void {
  (app as unknown as { close(): void }).close();
}

export function listen(app: uWS.TemplatedApp, host: string, port: number): Promise<{ socket: uWS.us_listen_socket; port: number }> {
  return new Promise((resolve, reject) => {
    app.listen(host, port, (socket) => {
      if (socket === false) reject(new Error(`could not listen on ${host}:${port}`));
      else resolve({ socket, port: uWS.us_socket_local_port(socket as unknown as uWS.us_socket) });
    });
  });
}

export function stopListening(socket: uWS.us_listen_socket): void {
  uWS.us_listen_socket_close(socket);
}
