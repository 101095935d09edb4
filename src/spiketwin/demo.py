"""`make demo`: the main job on the embedded default data set (scikit-learn's bundled digits)."""


def main() -> None:
    print("spiketwin demo: the SpikeZIP-TF conversion demo (train a ViT on the bundled digits, QAT, convert,\n"
          "verify equivalence, accuracy per time step, energy, plot) lands with the vision conversion issue.\n"
          "Until then this prints what will come and exits 0.")


if __name__ == "__main__":
    main()
