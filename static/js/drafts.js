// Unsaved painter work kept in the browser (IndexedDB), keyed by user and image, so a reload,
// a crash or a closed tab loses no strokes. A draft holds the mask as a grayscale PNG (the same
// codec as the save), the chosen label and the server revision it was painted over.

const DB_NAME = "sage-studio";
const STORE = "drafts";

function openDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

let dbPromise;
function db() {
  dbPromise ??= openDb();
  return dbPromise;
}

function tx(mode, fn) {
  return db().then(
    (d) =>
      new Promise((resolve, reject) => {
        const t = d.transaction(STORE, mode);
        const result = fn(t.objectStore(STORE));
        t.oncomplete = () => resolve(result.result);
        t.onerror = () => reject(t.error);
        t.onabort = () => reject(t.error);
      }),
  );
}

export const draftKey = (userId, imageId) => `u${userId}:i${imageId}`;

/** @returns {Promise<{png: Blob, label: string|null, baseRevision: number|null, savedAt: number}|undefined>} */
export async function loadDraft(key) {
  const req = await tx("readonly", (s) => s.get(key));
  return req?.png ? req : undefined;
}

export function saveDraft(key, draft) {
  return tx("readwrite", (s) => s.put({ ...draft, savedAt: Date.now() }, key));
}

export function deleteDraft(key) {
  return tx("readwrite", (s) => s.delete(key));
}
